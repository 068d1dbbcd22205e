"""Joining the worker group: torch.distributed with a timeout on every exchange.

gloo on CPUs, NCCL on CUDA devices (each rank its own GPU). A rank that dies closes its
connections: the next exchange with it fails at once. A rank that hangs is found by the
timeout: an exchange waits at most `timeout_s`, and rank 0 pings idle ranks every third of it
(runner.Heartbeat), so an idle rank that hears nothing for `timeout_s` knows rank 0 is gone.
Either way the group ends (GroupFailed) within `timeout_s` plus one ping period.

Meeting the other ranks is not an exchange: every rank loads its model first, then joins, and
the rendezvous waits up to STARTUP_TIMEOUT_S (a loaded machine may take a while to start a
rank); the exchanges then run on a group of all ranks with `timeout_s`.
"""

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 60.0  # longer than one rank's share of a tick at the largest size (see README)
STARTUP_TIMEOUT_S = 600.0


class GroupFailed(BaseException):
    """A rank died, hung past the timeout, or broke the protocol. A BaseException, like
    KeyboardInterrupt: it must pass through the engine's per-stage guards, which would otherwise
    fail the requests, and it is no request's fault. The worker exits non-zero and the queue's
    leases give its jobs to the next worker."""


@dataclass
class GroupInfo:
    rank: int
    world_size: int
    device: torch.device
    backend: str
    timeout_s: float
    pg: object = None  # the process group the exchanges run on (with timeout_s); set by join()

    @property
    def comm_device(self) -> torch.device:
        """Where tensors travel from: NCCL sends from the GPU, gloo from host memory."""
        return self.device if self.backend == "nccl" else torch.device("cpu")


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def group_info(rank: int, world_size: int, device: str | torch.device,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> GroupInfo:
    device = torch.device(device)
    return GroupInfo(rank, world_size, device, backend_for(device), timeout_s)


def join(info: GroupInfo, init_method: str | None = None) -> GroupInfo:
    """Meets the other ranks. `init_method` None: the environment (torchrun's MASTER_ADDR and
    MASTER_PORT), else e.g. tcp://127.0.0.1:PORT."""
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
    kwargs = {"init_method": init_method} if init_method else {}
    dist.init_process_group(info.backend, rank=info.rank, world_size=info.world_size,
                            timeout=timedelta(seconds=STARTUP_TIMEOUT_S), **kwargs)
    info.pg = dist.new_group(list(range(info.world_size)), timeout=timedelta(seconds=info.timeout_s),
                             backend=info.backend)
    return info


def join_group(rank: int, world_size: int, device: str | torch.device, timeout_s: float = DEFAULT_TIMEOUT_S,
               init_method: str | None = None) -> GroupInfo:
    return join(group_info(rank, world_size, device, timeout_s), init_method)


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


def leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
