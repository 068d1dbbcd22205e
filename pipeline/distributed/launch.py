"""Starting a worker group on one machine: this process is rank 0, ranks 1.. are child processes
(spawned: a fresh interpreter each, as CUDA needs), meeting over TCP on the loopback. Across
machines torchrun starts every rank instead (README, "Several GPUs behind one worker").
"""

import multiprocessing
import os
import socket
import sys

import torch

from .group import GroupFailed, join_group, leave_group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_rank(rank: int, world_size: int, device: str, model_folder: str, timeout_s: float,
               init_method: str | None, threads: int | None = None, streamed: dict[str, int] | None = None) -> int:
    """A rank other than 0, from joining the group to rank 0's stop: 0, or 1 when the group
    failed (rank 0 gone or silent past the timeout). `streamed`: the experts it streams block by
    block (name -> window blocks), the others it places whole."""
    from ..cuda_env import configure_process
    from ..loader import load_model, quiet_library_logging
    from .rank import RankServer
    from .wire import Link

    configure_process(device)  # before any CUDA call: the allocator's settings, and this rank's device current
    if threads:
        torch.set_num_threads(threads)
    quiet_library_logging()
    model = load_model(model_folder, device=device, streamed=streamed)  # before joining; experts load when first asked for
    group = join_group(rank, world_size, device, timeout_s, init_method)
    try:
        RankServer(model, Link(group, 0)).serve()
        return 0
    except GroupFailed as exc:
        print(f"paris worker group: rank {rank}: {exc}", file=sys.stderr)
        return 1
    finally:
        leave_group()


def _rank_process(*args) -> None:
    os._exit(serve_rank(*args))  # the exit code is the group's verdict; skip the atexit join of threads


def start_ranks(devices: list[str], model_folder: str, timeout_s: float, threads: int | None = None,
                init_method: str | None = None, streams: dict[int, dict[str, int]] | None = None) -> tuple[str, list]:
    """Starts ranks 1..len(devices)-1 (rank r on devices[r]); the caller joins as rank 0 with the
    returned init method. The children get SIGTERM if this process dies (they would also see
    rank 0's connections close)."""
    init_method = init_method or f"tcp://127.0.0.1:{free_port()}"
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for rank in range(1, len(devices)):
        p = ctx.Process(target=_rank_process, name=f"paris-rank-{rank}",
                        args=(rank, len(devices), devices[rank], str(model_folder), timeout_s, init_method, threads,
                              (streams or {}).get(rank)))
        p.start()
        procs.append(p)
    return init_method, procs


def end_ranks(procs: list, grace_s: float = 5.0) -> None:
    """Waits for the ranks to exit, then kills those still there (a hung or stopped one)."""
    for p in procs:
        p.join(grace_s)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
