"""Building a worker: its memory plan first, then the model, the engine, the store and the artifacts."""

from __future__ import annotations

import time

from pipeline.engine import Engine

from server.process.settings import Settings
from server.queue.worker_store import WorkerStore
from server.storage import open_artifacts

from .log import event
from .loop import Worker


class WorkerRefused(RuntimeError):
    """The model cannot be served on this device and budget; the message says what does not fit."""


def memory_plan(settings: Settings):
    """The worker's memory plan (pipeline/planner), logged as one line; None on a CPU given no
    device budget (no limit). Raises PlanRefused naming what does not fit."""
    import torch

    from pipeline.planner.serving import budget_target, check_free, serving_plan

    target = budget_target(torch.device(settings.device), settings.device_memory, settings.host_memory,
                           settings.reserve, settings.max_batch)
    if target is None:
        event("memory_plan", plan=None, reason="no device budget on cpu: no limit")
        return None
    check_free(target, torch.device(settings.device))
    plan = serving_plan(settings.model, target)
    event("memory_plan", **plan.to_json())
    return plan


def build_worker(settings: Settings, redis_url: str, group=None) -> Worker:
    """Plans memory before loading anything, and refuses (WorkerRefused) a platform known to fail
    on the VAE or a budget that cannot serve one request of the largest size the model allows.
    `group`: rank 0 of a worker group (pipeline.distributed.serving.WorkerGroup), whose placement
    gives the memory plan and whose runner computes the experts' rows on their ranks."""
    import torch

    from pipeline.cuda_env import configure_process
    from pipeline.engine import MemoryLimits
    from pipeline.loader import load_model, quiet_library_logging
    from pipeline.manifest import read_manifest
    from pipeline.planner.plan import PlanRefused
    from pipeline.planner.serving import memory_limits, residency_settings
    from pipeline.vae_platform import UnsupportedPlatform, check_vae_platform

    configure_process(settings.device)  # before any CUDA call: the allocator's settings, and only this device
    if settings.threads:
        torch.set_num_threads(settings.threads)
    t0 = time.time()
    quiet_library_logging()
    device = torch.device(settings.device)
    try:
        check_vae_platform(device, read_manifest(settings.model).components.vae.dtype)
        plan = group.plan if group is not None else memory_plan(settings)
    except (UnsupportedPlatform, PlanRefused) as exc:
        raise WorkerRefused(str(exc)) from None
    model = load_model(settings.model, device=device, **residency_settings(plan))
    engine = Engine(model, max_batch=settings.max_batch, max_wait=settings.max_wait,
                    limits=memory_limits(plan) if plan else MemoryLimits(), stream_batch=plan.stream_batch if plan else 1,
                    expert_runner=group.runner_for(model) if group is not None else None)
    event("model_loaded", model=model.manifest.name, seconds=round(time.time() - t0, 2))
    store = WorkerStore.from_url(redis_url, settings.key_prefix)
    return Worker(settings, store, open_artifacts(settings, patient=True), engine)
