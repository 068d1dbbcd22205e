"""Joining the worker group: torch.distributed with a timeout on every exchange.

gloo on CPUs, NCCL on CUDA devices (each rank its own GPU). A rank that dies closes its
connections: the next exchange with it fails at once. A rank that hangs is found by the
timeout: an exchange waits at most `timeout_s`, and rank 0 pings idle ranks every third of it
(runner.Heartbeat), so an idle rank that hears nothing for `timeout_s` knows rank 0 is gone.
Either way the group ends (GroupFailed) within `timeout_s` plus one ping period.
"""

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 60.0  # longer than one rank's share of a tick at the largest size (see README)


class GroupFailed(BaseException):
    """A rank died, hung past the timeout, or broke the protocol. A BaseException, like
    KeyboardInterrupt: it must pass through the engine's per-stage guards, which would otherwise
    fail the requests, and it is no request's fault. The worker exits non-zero and the queue's
    leases give its jobs to the next worker."""


@dataclass(frozen=True)
class GroupInfo:
    rank: int
    world_size: int
    device: torch.device
    backend: str
    timeout_s: float

    @property
    def comm_device(self) -> torch.device:
        """Where tensors travel from: NCCL sends from the GPU, gloo from host memory."""
        return self.device if self.backend == "nccl" else torch.device("cpu")


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def join_group(rank: int, world_size: int, device: str | torch.device, timeout_s: float = DEFAULT_TIMEOUT_S,
               init_method: str | None = None) -> GroupInfo:
    """Joins the default process group. `init_method` None: the environment (torchrun's
    MASTER_ADDR/MASTER_PORT), else e.g. tcp://127.0.0.1:PORT."""
    device = torch.device(device)
    backend = backend_for(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs = {"init_method": init_method} if init_method else {}
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s),
                            **kwargs)
    return GroupInfo(rank, world_size, device, backend, timeout_s)


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


def leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
