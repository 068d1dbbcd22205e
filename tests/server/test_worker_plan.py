"""The worker plans its memory at start: the same plan as `paris plan`, its weight budget given
to the residency and its limits to the engine, one JSON log line; and it refuses, naming what
does not fit, a budget that cannot serve one request of the largest size (so does `paris serve`)."""

import json
import logging
import subprocess
import sys

import pytest

from pipeline.planner.footprint import measure_footprint
from pipeline.planner.plan import PlanRefused, Target, least_plan
from pipeline.planner.serving import memory_limits
from server.process.cli import EXIT_REFUSED
from server.process.settings import Settings
from server.worker.build import build_worker, memory_plan
from tests.server.harness import REPO, free_port

MAX_BATCH = 2
NO_REDIS = "redis://127.0.0.1:1"  # building a worker connects to nothing


@pytest.fixture(scope="module")
def least_device_bytes(tiny_model_dir) -> int:
    """What one request of the tiny model's largest size (64x32, 17 frames) needs on the device
    with no reserve: the least plan the planner can make."""
    footprint = measure_footprint(tiny_model_dir, max_batch=MAX_BATCH)
    assert footprint.shape.label == "64x32, 17 frames"
    return least_plan(footprint, Target(2**40, 2**40, max_batch=MAX_BATCH, reserve=0)).device_bytes


def settings(model, device_memory=None, **kw) -> Settings:
    return Settings(model=str(model), device_memory=device_memory, max_batch=MAX_BATCH, **kw)


def test_a_cpu_worker_given_no_budget_has_no_plan_and_no_limits(tiny_model_dir):
    assert memory_plan(settings(tiny_model_dir)) is None
    worker = build_worker(settings(tiny_model_dir), NO_REDIS)
    assert worker.engine.model.residency.budget_bytes is None and worker.engine.limits.rows_per_forward is None


def test_the_worker_serves_under_its_plan_and_logs_it(tiny_model_dir, least_device_bytes, caplog):
    with caplog.at_level(logging.INFO, logger="paris.worker"):
        worker = build_worker(settings(tiny_model_dir, str(least_device_bytes), reserve="0"), NO_REDIS)
    logged = [json.loads(r.getMessage()) for r in caplog.records if '"memory_plan"' in r.getMessage()]
    assert len(logged) == 1 and logged[0]["device_budget"] == least_device_bytes
    plan = memory_plan(settings(tiny_model_dir, str(least_device_bytes), reserve="0"))
    assert plan.device_bytes <= least_device_bytes == plan.budget
    assert plan.weight_budget == logged[0]["weight_budget"]
    # weights placed whole get the weight budget less the streaming window; the streamed experts
    # run block by block through that window
    residency = worker.engine.model.residency
    assert residency.budget_bytes == plan.weight_budget - plan.window_bytes
    assert plan.streamed and all(residency.is_streamed(n) for n in plan.streamed)
    assert not any(residency.is_streamed(n) for n in plan.resident)
    # the weights' budget leaves the embeddings, the step cache and the largest phase (activations,
    # decode) with its allocator headroom beside it
    assert plan.weight_budget + plan.embedding_bytes + plan.step_cache_bytes + plan.phase_needs[plan.largest_phase] == plan.budget
    assert worker.engine.limits == memory_limits(plan)
    # encoders on demand may use the largest phase's room while they encode; streamed passes
    # gather the plan's stream_batch
    assert residency.on_demand == {n for n, p in plan.placement.items() if str(p) == "on demand"}
    assert residency.encoder_room == plan.encoder_room > 0
    assert worker.engine.scheduler.stream_batch == plan.stream_batch
    assert worker.engine.limits.rows_per_forward == plan.rows_per_forward
    assert worker.engine.limits.cache_bytes == plan.cache_entries * plan.footprint.embedding_bytes


def test_one_byte_less_is_refused_naming_what_does_not_fit(tiny_model_dir, least_device_bytes):
    with pytest.raises(PlanRefused, match="cannot serve one 64x32, 17 frames request"):
        memory_plan(settings(tiny_model_dir, str(least_device_bytes - 1), reserve="0"))
    with pytest.raises(PlanRefused, match="1.00 MiB of device memory is no more than the 2.00 GiB held in reserve"):
        memory_plan(settings(tiny_model_dir, "1MiB"))


def run_cli(*argv, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client.cli", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_paris_serve_stops_when_its_worker_refuses_with_the_message_and_exit_status(tiny_model_dir, least_device_bytes,
                                                                                       tmp_path):
    done = run_cli("serve", "--model", str(tiny_model_dir), "--data-dir", str(tmp_path), "--port", str(free_port()),
                   "--max-batch", str(MAX_BATCH), "--device-memory", str(least_device_bytes - 1), "--reserve", "0",
                   timeout=180)
    assert done.returncode == EXIT_REFUSED  # `paris worker`'s status, passed on
    refusal = [line for line in done.stderr.splitlines() if line.startswith("paris worker: refusing to start: ")]
    assert len(refusal) == 1 and "cannot serve one 64x32, 17 frames request" in refusal[0]
    assert '"worker_refused"' in done.stderr and '"worker_exited"' not in done.stderr  # not restarted
