"""`paris generate` plans like the worker (gpu-review-2 B5/N8): given a device budget it measures
the request's footprint, loads under the plan (streaming what does not fit) and runs under its
limits, with the frames of an unplanned run; a budget that cannot serve the request is refused
naming what does not fit. It sets the allocator's configuration before loading (N2)."""

import os

import imageio.v3 as iio
import numpy as np
import pytest

from client.cli import main as paris
from pipeline.cuda_env import ALLOC_CONF, EXPANDABLE
from pipeline.planner.footprint import measure_footprint
from pipeline.planner.plan import Target, least_plan

ARGS = ["a red circle moving left", "--seed", "3", "--steps", "4", "--frames", "9", "--size", "32x32"]


@pytest.fixture(scope="module")
def least(tiny_model_dir) -> int:
    footprint = measure_footprint(tiny_model_dir, "32x32", 9, max_batch=1)
    return least_plan(footprint, Target(2**40, 2**40, max_batch=1, reserve=0)).device_bytes


def frames(path):
    return np.stack(list(iio.imiter(path)))


def test_generate_under_the_least_plan_streams_and_gives_the_unplanned_frames(tiny_model_dir, least, tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.delenv(ALLOC_CONF, raising=False)
    assert paris(["generate", *ARGS, "--model", str(tiny_model_dir), "--out", str(tmp_path / "free.mp4")]) == 0
    assert "memory plan" not in capsys.readouterr().out  # a CPU given no budget: no plan, no limit
    assert os.environ[ALLOC_CONF] == EXPANDABLE
    assert paris(["generate", *ARGS, "--model", str(tiny_model_dir), "--out", str(tmp_path / "planned.mp4"),
                  "--device-memory", str(least), "--reserve", "0"]) == 0
    out = capsys.readouterr().out
    assert "memory plan: resident vae, router; streamed expert_0, expert_1, expert_2" in out
    assert np.array_equal(frames(tmp_path / "free.mp4"), frames(tmp_path / "planned.mp4"))


def test_generate_refuses_a_budget_below_one_request(tiny_model_dir, least, tmp_path, capsys):
    assert paris(["generate", *ARGS, "--model", str(tiny_model_dir), "--out", str(tmp_path / "x.mp4"),
                  "--device-memory", str(least - 1), "--reserve", "0"]) == 2
    assert "cannot serve one 32x32, 9 frames request" in capsys.readouterr().err


def test_a_budget_above_the_free_memory_is_refused(tiny_model_dir, tmp_path, capsys):
    """gpu-review-2 N11: `--device-memory 80GiB` on an H100 (79.1 GiB free) plans for memory the
    card does not have; a serving process refuses it (here on a CPU, whose free RAM is far below)."""
    assert paris(["generate", *ARGS, "--model", str(tiny_model_dir), "--out", str(tmp_path / "x.mp4"),
                  "--device-memory", "100000GiB"]) == 2
    assert "free on cpu now" in capsys.readouterr().err
