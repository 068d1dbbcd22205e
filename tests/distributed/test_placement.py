"""Placement of Paris 2.0's experts over a worker group (meta-device footprint of the
weights/paris-2 template: configs only, estimates)."""

import json
import subprocess
import sys

import pytest

from pipeline.planner.footprint import measure_footprint
from pipeline.planner.placement import place
from pipeline.planner.plan import Target, device_budget, make_plan

GiB = 2**30
EXPERT = 22.15 * GiB  # one 11B expert in bf16 (field.md)
HOST = 512 * GiB


@pytest.fixture(scope="module")
def paris2():
    return measure_footprint("weights/paris-2")


@pytest.fixture(scope="module")
def paris2_33():
    return measure_footprint("weights/paris-2", frames=33)


def check_fits(p):
    for d in p.devices:
        assert d.bytes <= device_budget(d.target.device_memory), d
        assert d.bytes >= len(d.experts) * EXPERT * 0.99, d  # at least its experts' weights
    assert {"vae", "router", "t5", "clip"} <= set(p.devices[0].components)
    assert all(p.experts[e] for e in p.footprint.expert_names)  # every expert somewhere


def test_one_device_is_the_one_device_plan(paris2):
    target = Target(80 * GiB, HOST)
    p = place(paris2, [target])
    assert p.devices[0].plan == make_plan(paris2, target)
    assert p.experts == {e: (0,) for e in paris2.expert_names}


def test_two_80gb_devices_hold_every_expert_whole(paris2):
    p = place(paris2, [Target(80 * GiB, HOST)] * 2)
    check_fits(p)
    assert not p.streamed  # one device alone must stream one of the three
    assert sum(len(d.experts) for d in p.devices) >= 3


def test_three_48gb_devices_one_expert_each(paris2):
    p = place(paris2, [Target(48 * GiB, HOST)] * 3)
    check_fits(p)
    assert not p.streamed
    assert sorted(len(d.experts) for d in p.devices) == [1, 1, 1]  # 48 GiB holds one 22 GiB expert, not two


def test_eight_80gb_devices_replicate(paris2):
    p = place(paris2, [Target(80 * GiB, HOST)] * 8)
    check_fits(p)
    copies = [len(r) for r in p.experts.values()]
    assert min(copies) >= 4 and max(copies) - min(copies) <= 1  # spread evenly
    assert p.rows_per_forward == 24  # a full image-to-video batch (3 rows x 8 requests)


def test_smaller_devices_get_fewer_rows(paris2_33, paris2):
    small = place(paris2, [Target(48 * GiB, HOST)] * 3)
    large = place(paris2_33, [Target(48 * GiB, HOST)] * 3)
    assert small.rows_per_forward < large.rows_per_forward


def test_paris_plan_devices_json():
    proc = subprocess.run([sys.executable, "-m", "client.cli", "plan", "--model", "weights/paris-2", "--devices", "3",
                           "--device-memory", "80GiB,48GiB,48GiB", "--host-memory", "512GiB", "--frames", "33", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["estimate"] is True and len(out["devices"]) == 3
    assert [d["device_memory"] for d in out["devices"]] == [80 * GiB, 48 * GiB, 48 * GiB]
    assert set(out["experts"]) == {"expert_0", "expert_1", "expert_2"}
    held = {e for d in out["devices"] for e in d["experts"]}
    assert held == set(out["experts"])


def test_paris_plan_devices_refuses_a_wrong_count():
    proc = subprocess.run([sys.executable, "-m", "client.cli", "plan", "--model", "weights/paris-2", "--devices", "3",
                           "--device-memory", "80GiB,48GiB", "--host-memory", "512GiB"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "2 sizes for 3 devices" in proc.stderr


def test_stream_copies_put_every_expert_on_both_80gb_devices(paris2):
    p = place(paris2, [Target(80 * GiB, HOST)] * 2, stream_copies=True)
    check_fits(p)
    assert all(ranks == (0, 1) for ranks in p.experts.values())  # every request's rows can split
    streamed = [e for r in p.streamed.values() for e in r]
    assert len(streamed) == 2 and len(set(streamed)) == 2  # one streamed copy on each device
    held_whole = {e for d in p.devices for e in d.experts if e not in d.streamed}
    assert held_whole == set(paris2.expert_names)  # every expert still whole somewhere
    assert p.streams == {1: {streamed_on_1: 3 for streamed_on_1 in p.streamed[1]}}


def test_stream_copies_never_demote_a_whole_expert(paris2):
    plain = place(paris2, [Target(48 * GiB, HOST)] * 3)
    copies = place(paris2, [Target(48 * GiB, HOST)] * 3, stream_copies=True)
    for a, b in zip(plain.devices, copies.devices):
        whole = lambda d: set(d.experts) - set(d.streamed)
        assert whole(a) == whole(b)
