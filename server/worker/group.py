"""`paris worker --group-devices a,b,...` (or every rank under torchrun): one worker over several
devices. Rank 0 is the worker (queue, engine, router, encoders, VAE); the other ranks compute
the rows of the experts placed on them (pipeline/distributed).

Failures: a rank that dies or stays silent past --group-timeout ends the group. Rank 0 finds it
at the next exchange (at once when the rank's process is gone, after the timeout when it hangs)
or, while idle, at the next ping (every third of the timeout): so within timeout x 4/3. It
then hands its unfinished jobs back to the queue (as on a graceful stop), kills its ranks and
exits non-zero; `paris serve` starts it again. A rank finds rank 0 gone the same way and exits.
If rank 0 itself is killed, its jobs come back when their leases lapse.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable

import torch

from pipeline.distributed.group import GroupFailed, group_info, join, leave_group, torchrun_env
from pipeline.distributed.launch import end_ranks, serve_rank, start_ranks
from pipeline.distributed.runner import Heartbeat

from server.process.settings import Settings

from .log import event

EXIT_GROUP_FAILED = 4  # `paris serve` restarts the worker on any code but EXIT_REFUSED


def in_group(settings: Settings) -> bool:
    env = torchrun_env()
    return len(settings.group_devices) > 1 or (env is not None and env[1] > 1)


def _torchrun_device(settings: Settings, local_rank: int) -> str:
    if settings.group_devices:
        return settings.group_devices[local_rank % len(settings.group_devices)]
    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


def run_group_worker(settings: Settings, redis_url: Callable[[], str]) -> int:
    from pipeline.distributed.serving import plan_group
    from pipeline.planner.plan import PlanRefused

    from server.process.children import EXIT_REFUSED
    from .build import WorkerRefused, build_worker

    timeout, env, procs, init = settings.group_timeout_s, torchrun_env(), [], None
    if env is None:
        rank, devices = 0, list(settings.group_devices)
        world = len(devices)
    else:  # a rank knows only its own device: the others are taken alike (give --device-memory)
        rank, world, local = env
        devices = [_torchrun_device(settings, local)] * world
    try:  # every rank plans (it is deterministic) and reads its share
        group = plan_group(group_info(rank, world, devices[rank], timeout), settings.model, devices,
                           settings.device_memory, settings.host_memory, settings.reserve, settings.max_batch,
                           settings.group_stream_copies)
    except PlanRefused as exc:  # the placement cannot hold rank 0's share
        print(f"paris worker: refusing to start: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if rank != 0:
        return serve_rank(rank, world, devices[rank], settings.model, timeout, None, settings.threads,
                          group.streams.get(rank))
    if env is None:
        init, procs = start_ranks(devices, settings.model, timeout, settings.threads, streams=group.streams)
    settings = settings.model_copy(update={"device": devices[0]})
    info = group.info
    try:  # the model loads before the group meets, as on every rank
        worker = build_worker(settings, redis_url(), group)
    except WorkerRefused as exc:
        print(f"paris worker: refusing to start: {exc}", file=sys.stderr)
        _exit_group(procs, EXIT_REFUSED)
    join(info, init)
    runner = worker.engine.expert_runner
    failures: list[GroupFailed] = []

    def failed(exc: GroupFailed) -> None:
        failures.append(exc)
        worker.stop.set()

    heartbeat = Heartbeat(runner, failed).start()
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop.set())
    event("worker_group_started", worker=worker.id, ranks=world, pids=[os.getpid()] + [p.pid for p in procs],
          devices=devices, experts=group.experts, streamed=group.streams, timeout_s=timeout)
    try:
        worker.run()
    except GroupFailed as exc:  # raised inside a tick: the loop did not get to hand its jobs back
        failures.append(exc)
        worker.shutdown()
    heartbeat.stop()
    if failures:
        event("worker_group_failed", worker=worker.id, error=str(failures[0]))
        _exit_group(procs, EXIT_GROUP_FAILED)
    runner.stop()
    end_ranks(procs)
    leave_group()
    return 0


def _exit_group(procs: list, code: int) -> None:
    """Ends the ranks (a hung one is killed) and this process, without the interpreter's teardown:
    the process group's destructors may wait on the rank that failed."""
    end_ranks(procs, grace_s=2.0)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)
