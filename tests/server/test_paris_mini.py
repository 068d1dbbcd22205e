"""The shipped default model behind the server: one short SDK job on weights/paris-mini."""

from pathlib import Path

import pytest
from openai import OpenAI

from pipeline.manifest import parse_size, read_manifest
from weights.recipe.detector import read_mp4

from .harness import REPO, Stack

MINI = REPO / "weights" / "paris-mini"
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.skipif(not (MINI / "model.json").is_file(),
                       reason="weights/paris-mini is not built (run `make paris-mini`)"),
]


def test_default_model_serves_a_video(tmp_path, valkey):
    manifest = read_manifest(MINI)
    s = Stack(tmp_path, MINI, valkey.connection_url, "mini")
    try:
        s.start_api()
        s.start_worker("w")
        sdk = OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        video = sdk.videos.create_and_poll(prompt="a red circle moving left", poll_interval_ms=200,
                                           extra_body={"num_inference_steps": 2, "seed": 1}, timeout=300)
        assert video.status == "completed", video
        assert video.model == manifest.name
        out = Path(tmp_path) / "mini.mp4"
        sdk.videos.download_content(video.id).write_to_file(out)
        frames, _ = read_mp4(out)
        w, h = parse_size(manifest.sampling.size)
        assert frames.shape == (manifest.sampling.num_frames, h, w, 3)
    finally:
        s.stop()
