"""Each worker owns exactly its device before any CUDA call, and runs with the allocator
configuration the memory plan relies on (gpu-review-2 N2, N3): checked on the command line and
environment `paris serve` starts each worker with, and in the process of a worker started alone."""

import os

import pytest

from client.cli import build_parser
from pipeline.cuda_env import ALLOC_CONF, EXPANDABLE
from server.process.cli import settings_from_args, worker_devices, worker_launch
from server.process.settings import Settings
from server.worker.build import build_worker

NO_REDIS = "redis://127.0.0.1:1"


def launches(tiny_model_dir, *argv, env=None):
    args = build_parser().parse_args(["serve", "--model", str(tiny_model_dir), *argv])
    settings = settings_from_args(args)
    return [worker_launch(args, settings, d, env if env is not None else {}) for d in worker_devices(settings)]


def device_of(argv: list[str]) -> str:
    return argv[argv.index("--device") + 1]


def test_each_worker_sees_only_its_gpu_as_cuda_0(tiny_model_dir):
    started = launches(tiny_model_dir, "--workers", "4", "--devices", "cuda:0,cuda:1")
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in started] == ["0", "1", "0", "1"]
    assert {device_of(argv) for argv, _ in started} == {"cuda:0"}


def test_gpus_are_named_through_the_parents_own_visible_devices(tiny_model_dir):
    started = launches(tiny_model_dir, "--devices", "cuda:0,cuda:1", env={"CUDA_VISIBLE_DEVICES": "4,6"})
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in started] == ["4", "6"]


def test_workers_run_with_expandable_segments_unless_the_user_configured_the_allocator(tiny_model_dir):
    assert all(env[ALLOC_CONF] == EXPANDABLE for _, env in launches(tiny_model_dir, "--devices", "cuda:0,cuda:1"))
    mine = {ALLOC_CONF: "max_split_size_mb:512"}
    assert all(env[ALLOC_CONF] == "max_split_size_mb:512"
               for _, env in launches(tiny_model_dir, "--devices", "cuda:0", env=mine))


def test_a_worker_group_sees_every_gpu_of_its_group(tiny_model_dir):
    """A group's ranks each make their own device current: narrowing the group's process to one
    GPU would hide the others from it."""
    [(argv, env)] = launches(tiny_model_dir, "--device", "cuda", "--group-devices", "cuda:0,cuda:1")
    assert "CUDA_VISIBLE_DEVICES" not in env and env[ALLOC_CONF] == EXPANDABLE
    assert argv[argv.index("--group-devices") + 1] == "cuda:0,cuda:1"


def test_a_cpu_worker_keeps_its_device_and_sees_every_gpu(tiny_model_dir):
    [(argv, env)] = launches(tiny_model_dir, env={"CUDA_VISIBLE_DEVICES": "2"})
    assert device_of(argv) == "cpu" and env["CUDA_VISIBLE_DEVICES"] == "2"


def test_a_worker_started_alone_configures_the_allocator_before_loading(tiny_model_dir, monkeypatch):
    monkeypatch.delenv(ALLOC_CONF, raising=False)
    build_worker(Settings(model=str(tiny_model_dir), device="cpu", max_batch=2), NO_REDIS)
    assert os.environ[ALLOC_CONF] == EXPANDABLE


def test_a_users_allocator_setting_without_expandable_segments_is_kept_with_a_warning(tiny_model_dir, monkeypatch, caplog):
    monkeypatch.setenv(ALLOC_CONF, "expandable_segments:False")
    build_worker(Settings(model=str(tiny_model_dir), device="cpu", max_batch=2), NO_REDIS)
    assert os.environ[ALLOC_CONF] == "expandable_segments:False"
    assert any("expandable_segments" in r.getMessage() and "plan" in r.getMessage() for r in caplog.records)


def test_a_worker_refuses_a_budget_above_the_free_memory(tiny_model_dir):
    from server.worker.build import WorkerRefused

    with pytest.raises(WorkerRefused, match="free on cpu now"):
        build_worker(Settings(model=str(tiny_model_dir), device="cpu", max_batch=2, device_memory="100000GiB"), NO_REDIS)
