"""The paris-mini recipe: data, detector, encoders, and each training stage on tiny data."""

import json
import math

import numpy as np
import pytest
import torch

from weights.recipe import data
from weights.recipe.detector import detect, detect_mp4


def test_clips_are_deterministic_by_seed():
    a, specs_a = data.make_clips(6, seed=3)
    b, specs_b = data.make_clips(6, seed=3)
    c, _ = data.make_clips(6, seed=4)
    assert a.dtype == np.uint8 and a.shape == (6, data.FRAMES, data.SIZE, data.SIZE, 3)
    assert np.array_equal(a, b) and specs_a == specs_b
    assert not np.array_equal(a, c)


def test_labels_and_prompts():
    assert len(data.all_specs()) == 6 * 3 * 8
    for cluster in data.CLUSTERS:
        _, specs = data.make_clips(10, seed=1, cluster=cluster)
        assert all(s.cluster == cluster for s in specs)
    spec = data.ClipSpec("green", "triangle", "fading out")
    assert spec.prompt == "a green triangle fading out" and spec.cluster == "fade" and spec.cluster_index == 2
    assert data.parse_prompt("A Red CIRCLE Moving   LEFT") == data.ClipSpec("red", "circle", "moving left")
    assert data.parse_prompt("a blue square growing.") == data.ClipSpec("blue", "square", "growing")
    assert data.parse_prompt("a purple circle moving left") is None
    assert data.parse_prompt("") is None


def test_clip_shows_its_colour_on_black():
    clip = data.render_clip(data.ClipSpec("yellow", "square", "moving up"), np.random.default_rng(0))
    assert clip[:, 0, 0].max() == 0  # corners stay black
    bright = clip[0][clip[0].max(-1) > 200]
    assert bright[:, 2].max() == 0 and bright[:, 0].min() > 200 and bright[:, 1].min() > 200


def test_detector_reads_every_generator_clip():
    rng = np.random.default_rng(11)
    specs = data.all_specs()
    for spec in specs:
        got = detect(data.render_clip(spec, rng))
        assert (got.colour, got.motion) == (spec.colour, spec.motion), (spec, got)


def test_detector_reads_generator_clips_through_mp4(tmp_path):
    from pipeline.video import write_mp4

    rng = np.random.default_rng(5)
    for i, motion in enumerate(data.MOTIONS):
        spec = data.ClipSpec(list(data.COLOURS)[i % 6], data.SHAPES[i % 3], motion)
        path = write_mp4(data.render_clip(spec, rng), data.FPS, tmp_path / f"{i}.mp4")
        got = detect_mp4(path)
        assert (got.colour, got.motion) == (spec.colour, spec.motion), (spec, got)


def test_detector_says_nothing_for_a_static_or_black_clip():
    clip = data.render_clip(data.ClipSpec("red", "circle", "moving left"), np.random.default_rng(0))
    assert detect(np.repeat(clip[:1], 9, axis=0)).motion is None
    assert detect(np.zeros_like(clip)).colour is None


@pytest.fixture(scope="module")
def encoders():
    from weights.recipe.encoders import Encoders

    return Encoders(seed=0)


def test_tokenizers_are_case_insensitive_and_clip_pools_at_eos(encoders):
    t5 = encoders.t5_tokenizer(["A RED Circle moving left", "a red circle moving left"]).input_ids
    assert t5[0] == t5[1] and t5[0][-1] == encoders.t5_tokenizer.eos_token_id
    assert encoders.t5_tokenizer.unk_token_id not in t5[0]
    tok = encoders.clip_tokenizer(["a red circle moving left"], padding="max_length", max_length=encoders.max_length,
                                  return_tensors="pt")
    out = encoders.clip(input_ids=tok.input_ids)
    eos = int((tok.input_ids[0] == encoders.clip_tokenizer.eos_token_id).nonzero()[0])
    assert eos == 6  # <bos> + 5 words
    assert torch.allclose(out.pooler_output[0], out.last_hidden_state[0, eos])
    assert encoders.clip.config.eos_token_id == encoders.clip_tokenizer.eos_token_id != 2


def test_encoders_are_seeded_and_frozen(encoders):
    from weights.recipe.encoders import Encoders

    again = Encoders(seed=0)
    t5a, clipa = encoders.text(["a blue square growing", ""])
    t5b, clipb = again.text(["a blue square growing", ""])
    assert torch.equal(t5a, t5b) and torch.equal(clipa, clipb)
    assert t5a.shape == (2, encoders.max_length, 64) and clipa.shape == (2, 64)
    assert not any(p.requires_grad for p in encoders.t5.parameters())
    assert not torch.allclose(clipa[0], clipa[1])
    feats = encoders.image(data.make_clips(2, seed=0)[0][:, 0])
    assert feats.shape == (2, 64) and torch.isfinite(feats).all()


def test_vae_stages_learn_and_set_scaling_factor():
    from weights.recipe.vae import build_vae, evaluate_vae, pretrain_on_frames, train_vae

    vae = build_vae(0, block_out_channels=(8, 8, 8))
    # 20 steps: the first and the last 10 (the windows of loss_first / loss_last) do not overlap
    frames = pretrain_on_frames(vae, steps=20, batch=2, seed=0, progress=False)
    assert math.isfinite(frames["psnr_frames"]) and frames["loss_last"] < 0.6 * frames["loss_first"]

    held_out = data.to_model_space(data.make_clips(32, seed=0 + 999)[0])  # train_vae's own held-out clips
    before = evaluate_vae(vae.eval(), held_out)["psnr"]
    stats = train_vae(vae, steps=4, batch=2, seed=0, progress=False)
    assert math.isfinite(stats["loss_last"]) and stats["psnr"] > before
    with torch.no_grad():
        z = vae.encode(held_out).latent_dist.mode()
    assert z.shape == (32, 16, 3, 8, 8)
    assert vae.config.scaling_factor == pytest.approx(1.0 / float(z.std()), rel=1e-5)  # scaled latents: unit std


@pytest.fixture(scope="module")
def tiny_cache(encoders):
    from weights.recipe.latents import build_cache
    from weights.recipe.vae import build_vae

    vae = build_vae(0, block_out_channels=(8, 8, 8)).eval()
    return build_cache(vae, encoders, per_cluster=4, seed=0, progress=False, batch=4)


def test_cache_holds_every_cluster_and_the_null_prompt(tiny_cache):
    assert len(tiny_cache) == 12 and tiny_cache.prompts[0] == ""
    assert tiny_cache.latents.shape == (12, 16, 3, 8, 8)
    assert sorted(set(tiny_cache.cluster.tolist())) == [0, 1, 2]
    assert tiny_cache.t5.shape[0] == len(tiny_cache.prompts)


def test_cached_reference_latent_is_the_inference_encoding(tiny_cache):
    """i2v conditions on the first frame encoded alone (pipeline.encoders.vae_encode_frame), which
    is not latent frame 0 of the clip (GroupNorm spans time): the cache keeps the former."""
    from weights.recipe.latents import encode_clips
    from weights.recipe.vae import build_vae

    vae = build_vae(0, block_out_channels=(8, 8, 8)).eval()
    clips = data.make_clips(4, seed=0 * 100 + 0, cluster="translation")[0]
    single = encode_clips(vae, clips[:, :1])
    assert tiny_cache.ref_latents.shape == (12, 16, 1, 8, 8)
    assert torch.allclose(tiny_cache.ref_latents[:4], single, atol=1e-4)


def test_expert_stage_learns_on_its_cluster_only(tiny_cache):
    from weights.recipe.experts import expert_config, first_frame_cond, train_expert

    cfg = expert_config(64, 64, hidden=32, heads=2, depth=1, single=1)
    assert sum(cfg.axes_dim) == cfg.hidden_size // cfg.num_heads
    model, stats = train_expert(tiny_cache, 1, cfg, steps=60, batch=8, seed=0, lr=3e-3, progress=False)
    assert stats["clips"] == 4
    assert math.isfinite(stats["loss_last"]) and stats["loss_last"] < stats["loss_first"]
    cond = first_frame_cond(tiny_cache.ref_latents[:2], torch.tensor([True, False]), 3)
    assert cond.shape == (2, 3 * 4 * 4, 68)
    assert cond[1].abs().sum() == 0 and cond[0, :16, :4].eq(1).all() and cond[0, 16:].abs().sum() == 0  # mask on latent frame 0 only


def test_router_stage_learns(tiny_cache):
    from weights.recipe.router import router_accuracy, router_config, train_router

    model, stats = train_router(tiny_cache, router_config(64, 64, hidden=32, depth=1), steps=60, batch=12, seed=0,
                                lr=3e-3, progress=False)
    assert math.isfinite(stats["loss_last"]) and stats["loss_last"] < 0.8 * stats["loss_first"]
    acc = router_accuracy(model, tiny_cache, levels=(0.0, 1.0))
    # at t = 0 the noisy latent is the clean one: the accuracy counted by hand from the logits
    with torch.no_grad():
        logits = model(tiny_cache.latents, torch.zeros(len(tiny_cache)), tiny_cache.clip[tiny_cache.prompt_index],
                       tiny_cache.image_feature, torch.zeros(len(tiny_cache), dtype=torch.bool))
    by_hand = sum(int(p == c) for p, c in zip(logits.argmax(-1).tolist(), tiny_cache.cluster.tolist())) / len(tiny_cache)
    assert acc[0.0] == pytest.approx(by_hand) and by_hand >= 0.75  # learned: chance is 1/3
    assert set(acc) == {0.0, 1.0}


def test_tiny_build_makes_a_loadable_model_folder(tmp_path):
    from pipeline.generate import generate
    from pipeline.loader import load_model
    from pipeline.manifest import read_manifest
    from pipeline.request import GenerationRequest
    from weights.recipe.build import build

    out = tmp_path / "mini"
    report = build(out, profile="tiny", progress=False, threads=1)
    manifest = read_manifest(out)
    assert [e.name for e in manifest.components.experts] == list(data.CLUSTERS)
    assert json.loads((out / "build_report.json").read_text())["profile"] == "tiny"
    assert report["stages"]["expert_2"]["clips"] == 8
    result = generate(load_model(out), GenerationRequest(prompt="A Red Circle moving left", seed=0,
                                                         num_inference_steps=2))
    assert result.frames.shape == (data.FRAMES, data.SIZE, data.SIZE, 3)


def test_build_is_deterministic(tmp_path):
    from weights.recipe.build import build

    for name in ("a", "b"):
        build(tmp_path / name, profile="tiny", progress=False, threads=1, workers=1)
    for rel in ("vae/diffusion_pytorch_model.safetensors", "expert_1/model.safetensors", "router/model.safetensors",
                "clip_text/model.safetensors", "image_encoder/model.safetensors"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
