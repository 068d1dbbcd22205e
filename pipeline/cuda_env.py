"""What a process settles before CUDA initialises: the allocator configuration the memory plan
relies on (pipeline/planner/plan.py, "Allocator model") and the one GPU it owns.

CUDA reads both once, at the process's first CUDA call, so they go into the environment of a
process about to start (`paris serve` starting its workers: each sees only its GPU, as cuda:0)
or are set at the top of one that has made no CUDA call yet (`paris worker`, `paris generate`:
the device is made current there, so pinning with cudaHostRegister, which runs in the current
device's context, never creates a context on GPU 0 for a worker on another GPU).
"""

import logging
import os
from collections.abc import Mapping

import torch

ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
EXPANDABLE = "expandable_segments:True"
VISIBLE = "CUDA_VISIBLE_DEVICES"

log = logging.getLogger("paris.cuda")


def allocator_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What to add to an environment: expandable segments, unless the user set the allocator's
    configuration (theirs is kept as it is)."""
    return {} if ALLOC_CONF in environ else {ALLOC_CONF: EXPANDABLE}


def allocator_warning(environ: Mapping[str, str]) -> str | None:
    """A user's allocator configuration that turns off what the plan assumes, said in words."""
    conf = environ.get(ALLOC_CONF, EXPANDABLE).replace(" ", "").lower()
    if "expandable_segments:true" in conf:
        return None
    return (f"{ALLOC_CONF}={environ[ALLOC_CONF]!r} has no expandable_segments:True: the memory plan's headroom assumes"
            " expandable segments; the default allocator can need up to 1.4x a phase's bytes and run out of memory")


def owned_device_env(device: str, environ: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """For a child process that is to own `device` alone: the environment to add and the name it
    gives the device. cuda:N becomes cuda:0 with CUDA_VISIBLE_DEVICES naming GPU N (through the
    parent's own CUDA_VISIBLE_DEVICES when it has one); other devices are left as they are."""
    d = torch.device(device)
    if d.type != "cuda":
        return {}, device
    index = d.index or 0
    parent = [v.strip() for v in environ[VISIBLE].split(",")] if environ.get(VISIBLE) else None
    if parent is not None and index >= len(parent):
        raise ValueError(f"{device} is not among the {len(parent)} GPUs {VISIBLE}={environ[VISIBLE]!r} shows")
    return {VISIBLE: parent[index] if parent is not None else str(index)}, "cuda:0"


def child_env(device: str, environ: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """A worker's whole environment and device name: `environ` plus its GPU and allocator settings."""
    owned, name = owned_device_env(device, environ)
    return {**environ, **allocator_env(environ), **owned}, name


def configure_process(device: str | torch.device) -> None:
    """At the top of a process that runs the engine, before any CUDA call: the allocator's
    configuration (unless the user set one; a warning if it lacks expandable segments), then
    `device` made current."""
    os.environ.update(allocator_env(os.environ))
    warning = allocator_warning(os.environ)
    if warning:
        log.warning(warning)
    d = torch.device(device)
    if d.type == "cuda":
        if torch.cuda.is_initialized():
            log.warning(f"CUDA was initialised before {ALLOC_CONF} was set: the allocator keeps its earlier configuration")
        torch.cuda.set_device(d)
