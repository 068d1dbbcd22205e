"""Must show (issue 18): `paris plan` for paris-2 at 141, 80, 48 and 24 GiB, for the quality,
balanced and fast presets, text-to-video and image-to-video: every phase of a full batch within
the budget with at least its allocator headroom, and the headroom printed."""

import json
from pathlib import Path

import pytest

from client.cli import main as paris
from pipeline.planner.plan import GiB, PHASE_HEADROOM_MIN
from pipeline.speed import PRESETS, Speed

PARIS_2 = Path(__file__).resolve().parents[2] / "weights" / "paris-2"
PHASES = ("encode text", "encode image", "denoise", "decode")


def plan(capsys, gib: int, *extra) -> str:
    assert paris(["plan", "--model", str(PARIS_2), "--device-memory", f"{gib}GiB", "--host-memory", "256GiB", *extra]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("gib", [141, 80, 48, 24])
def test_every_phase_of_every_full_batch_fits_with_headroom(capsys, gib):
    p = json.loads(plan(capsys, gib, "--json"))
    assert set(p["full_batches"]) == {"plain t2v", "plain i2v", "cached t2v", "cached i2v"}
    for kind, batch in p["full_batches"].items():
        for phase in PHASES:
            assert batch["used"][phase] <= p["device_budget"], (kind, phase)
            assert batch["headroom"][phase] >= PHASE_HEADROOM_MIN, (kind, phase)
    assert p["device_bytes"] <= p["device_budget"] and min(p["phase_headroom"].values()) >= PHASE_HEADROOM_MIN
    if gib >= 80:  # room for a full image-to-video batch's step cache (48 GiB caches 5 of 8 requests, 24 GiB none)
        assert p["full_batches"]["cached i2v"]["step_cache_rows"] == 24


@pytest.mark.parametrize("gib", [141, 80, 48, 24])
def test_the_table_prints_each_presets_full_batches_with_the_headroom_of_each_phase(capsys, gib):
    out = plan(capsys, gib)
    lines = {tuple(line.split()[:2]): line for line in out.splitlines() if line.split()[:1] in (["quality"], ["balanced"], ["fast"])}
    assert set(lines) == {(s.value, k) for s in Speed for k in ("t2v", "i2v")}
    for (speed, kind), line in lines.items():
        cells = line.split()[3:]  # "U GiB / H GiB" per phase
        assert len(cells) == 5 * len(PHASES)
        used = [float(cells[5 * i]) for i in range(len(PHASES))]
        headroom = [float(cells[5 * i + 3]) for i in range(len(PHASES))]
        budget = (gib - max(2, gib * 0.05))
        assert max(used) <= budget + 0.005 and min(headroom) >= 0.25
        if not PRESETS[Speed(speed)].cache.enabled:
            assert line.split()[2] == "0"  # the quality preset caches nothing
    assert "allocator headroom" in out


def test_stream_batch_is_the_requests_whose_compute_covers_a_streamed_copy(capsys):
    """Independently: 23.78 GB at 50 GB/s is 0.476 s; a 33-frame row is 41.9 TFLOP, 0.094 s at
    445 TFLOP/s: 6 rows, 3 two-row requests. At 129 frames a row (171.9 TFLOP, 0.386 s) needs
    2 rows: 1 request."""
    assert json.loads(plan(capsys, 80, "--json", "--frames", "33"))["stream_batch"] == 3
    assert json.loads(plan(capsys, 80, "--json"))["stream_batch"] == 1
    assert json.loads(plan(capsys, 141, "--json", "--frames", "33"))["stream_batch"] == 1  # nothing streams
