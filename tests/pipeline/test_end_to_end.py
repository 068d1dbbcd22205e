import numpy as np
from PIL import Image

from pipeline.generate import generate
from pipeline.request import GenerationRequest
from pipeline.video import write_mp4, write_spritesheet, write_thumbnail
from weights.recipe.detector import read_mp4


def test_text_to_video_mp4_decodes_with_requested_frames_size_and_fps(tiny_model, tmp_path):
    result = generate(tiny_model, GenerationRequest("a red circle moving left", seed=7, num_frames=13, size="64x32", fps=12))
    path = write_mp4(result.frames, result.fps, tmp_path / "out.mp4")
    frames, fps = read_mp4(path)
    assert frames.shape == (13, 32, 64, 3)
    assert fps == 12
    thumb = Image.open(write_thumbnail(result.frames, tmp_path / "thumb.png"))
    assert thumb.size == (64, 32)
    sheet = Image.open(write_spritesheet(result.frames, tmp_path / "sheet.png"))
    assert sheet.size == (4 * 64, 4 * 32)  # 13 frames -> 4x4 grid


def test_mp4_round_trip_keeps_smooth_content(tmp_path):
    ramp = np.linspace(0, 255, 64)[None, :, None] * np.ones((32, 1, 3))
    frames = np.stack([np.roll(ramp, 4 * i, axis=1) for i in range(9)]).astype(np.uint8)
    decoded, fps = read_mp4(write_mp4(frames, 8, tmp_path / "ramp.mp4"))
    assert fps == 8 and decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 4


def test_image_to_video_keeps_the_first_frame_condition(tiny_model, tmp_path):
    image = Image.new("RGB", (48, 40), (200, 30, 30))
    result = generate(tiny_model, GenerationRequest("a red circle", image=image, seed=3))
    frames, _ = read_mp4(write_mp4(result.frames, result.fps, tmp_path / "i2v.mp4"))
    assert frames.shape == (9, 32, 32, 3)


def test_same_seed_same_frames_other_seed_differs(tiny_model):
    a = generate(tiny_model, GenerationRequest("a blue square growing", seed=11))
    b = generate(tiny_model, GenerationRequest("a blue square growing", seed=11))
    c = generate(tiny_model, GenerationRequest("a blue square growing", seed=12))
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)


def test_cli_generate_writes_outputs_and_prints_trace(tiny_model_dir, tmp_path, capsys):
    from client.cli import main

    out = tmp_path / "cli.mp4"
    assert main(["generate", "a green triangle fading in", "--model", str(tiny_model_dir), "--out", str(out), "--seed", "1"]) == 0
    assert out.is_file() and out.with_suffix(".png").is_file()
    assert "routing: expert-0" in capsys.readouterr().out
