"""Must show: the `openai` SDK flow end to end against a real uvicorn server, Valkey and worker."""

import io

import httpx
import pytest
from openai import OpenAI
from PIL import Image

from weights.recipe.detector import read_mp4

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def stack(make_module_stack):
    s = make_module_stack()
    s.start_api()
    s.start_worker("w1")
    return s


@pytest.fixture(scope="module")
def sdk(stack):
    return OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)


def test_create_and_poll_then_download_mp4(sdk, stack, tmp_path):
    # a non-default size and frame count, so the file proves the request was honoured
    video = sdk.videos.create_and_poll(prompt="a red circle moving left", size="64x32",
                                       extra_body={"num_frames": 5, "seed": 7}, poll_interval_ms=100)
    assert video.status == "completed", video
    assert video.progress == 100
    extra = video.model_extra
    assert extra["seed"] == 7 and extra["num_frames"] == 5 and video.size == "64x32"
    assert set(extra["routing"]["step_share"]) == {"0", "1", "2"}
    assert abs(sum(extra["routing"]["step_share"].values()) - 1.0) < 1e-3  # top_k=1: one expert per step
    assert abs(sum(extra["routing"]["weight_share"].values()) - 1.0) < 1e-3
    content = sdk.videos.download_content(video.id)
    path = tmp_path / "out.mp4"
    content.write_to_file(path)
    frames, _fps = read_mp4(path)
    assert frames.shape == (5, 32, 64, 3)  # (frames, height, width, rgb)

    # thumbnail and spritesheet variants, and the full per-step routing trace
    thumb = sdk.videos.download_content(video.id, variant="thumbnail")
    assert Image.open(io.BytesIO(thumb.read())).size == (64, 32)
    sheet = sdk.videos.download_content(video.id, variant="spritesheet")
    Image.open(io.BytesIO(sheet.read())).verify()
    trace = httpx.get(f"{stack.url}/v1/videos/{video.id}/trace").json()
    assert len(trace["steps"]) == extra["num_inference_steps"]
    assert {"step", "experts", "weights"} <= set(trace["steps"][0])
    # weight movement while the job ran: the worker's first job, with no memory budget, loads each
    # expert it routed to once, lazily, and none is evicted
    moved = extra["residency"]
    used = {e for step in trace["steps"] for e in step["experts"]}
    assert moved["expert_loads_while_running"] == len(used) and moved["max_waited_ticks"] == 0
    assert extra["compute"]["row_forwards_skipped"] == extra["compute"]["block_forwards_skipped"] == 0  # quality

    # retrieve / list / Range
    got = sdk.videos.retrieve(video.id)
    assert got.id == video.id and got.status == "completed"
    listed = sdk.videos.list()
    assert video.id in [v.id for v in listed.data]
    r = httpx.get(f"{stack.url}/v1/videos/{video.id}/content", headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and len(r.content) == 100 and r.headers["content-type"] == "video/mp4"

    # delete through the SDK
    deleted = sdk.videos.delete(video.id)
    assert deleted.deleted and deleted.object == "video.deleted"
    assert httpx.get(f"{stack.url}/v1/videos/{video.id}").status_code == 404


def test_a_speed_preset_through_extra_body_reports_the_work_it_saved(sdk):
    # the interval (a form field: "low,high") leaves the unconditional branch out at every step with
    # t < 0.5: work saved for sure
    video = sdk.videos.create_and_poll(prompt="a blue square growing", poll_interval_ms=100,
                                       extra_body={"speed": "fast", "guidance_interval": "0.5,1", "seed": 3})
    assert video.status == "completed", video
    c, steps = video.model_extra["compute"], video.model_extra["num_inference_steps"]
    assert c["row_forwards"] + c["row_forwards_skipped"] == 2 * steps  # t2v, top-1: two branches a step
    assert 0 < c["row_forwards_skipped"] < steps
    blocks = c["block_forwards"] + c["block_forwards_skipped"]
    assert blocks % (2 * steps) == 0 and c["block_forwards_skipped"] >= c["row_forwards_skipped"] * blocks // (2 * steps)


def test_image_to_video_through_input_reference(sdk, tmp_path):
    first = tmp_path / "first.png"
    Image.new("RGB", (32, 32), (220, 30, 30)).save(first)
    with open(first, "rb") as fh:
        video = sdk.videos.create_and_poll(prompt="a red square", input_reference=fh, size="32x32",
                                           poll_interval_ms=100)
    assert video.status == "completed", video
    assert video.model_extra["image_to_video"] is True
    out = tmp_path / "i2v.mp4"
    sdk.videos.download_content(video.id).write_to_file(out)
    frames, _ = read_mp4(out)
    assert frames.shape[1:] == (32, 32, 3) and frames.shape[0] == video.model_extra["num_frames"]


def test_seconds_maps_to_frames_and_models_route(sdk, stack):
    video = sdk.videos.create(prompt="a blue circle", seconds="1", size="32x32")
    assert video.status in ("queued", "in_progress")
    fps = video.model_extra["fps"]
    assert video.model_extra["num_frames"] == round(fps / 4) * 4 + 1
    models = sdk.models.list()
    assert [m.id for m in models.data] == ["tiny-random"]
    sdk.videos.delete(video.id)


def test_unsupported_routes_answer_400(stack):
    for method, path in [("POST", "/v1/videos/edits"), ("POST", "/v1/videos/extensions"),
                         ("POST", "/v1/videos/characters"), ("GET", "/v1/videos/characters/char_1"),
                         ("POST", "/v1/videos/video_0/remix")]:
        r = httpx.request(method, stack.url + path)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["code"] == "unsupported"


def test_metrics_and_ready(stack):
    r = httpx.get(stack.url + "/ready")
    assert r.status_code == 200 and r.json()["workers"] >= 1
    text = httpx.get(stack.url + "/metrics").text
    for name in ("paris_queue_depth", "paris_jobs{", "paris_step_seconds_bucket", "paris_job_seconds_count",
                 "paris_expert_steps_total", "paris_jobs_finished_total", 'paris_component_loads_total{component="t5"}',
                 "paris_bytes_to_device_total", "paris_bytes_streamed_total", "paris_bytes_from_disk_total"):
        assert name in text, name
    moved = [line for line in text.splitlines() if line.startswith("paris_bytes_to_device_total ")]
    assert float(moved[0].split()[1]) > 0
