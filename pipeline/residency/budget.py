"""Memory budgets given on the command line or in settings, and the memory free now."""

import os
import re

import torch

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def parse_budget(spec: str | None, device: torch.device | str) -> int | None:
    """A device memory budget: None (no limit), a size ("40GiB", "500MB", "123456"), or a
    fraction of the memory free now ("0.8")."""
    if spec is None or str(spec).strip() == "":
        return None
    text = str(spec).strip().lower()
    if re.fullmatch(r"0?\.\d+|1(\.0*)?", text):
        return int(float(text) * free_memory(torch.device(device)))
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    if not match or match.group(2) not in UNITS:
        raise ValueError(f"device memory must be bytes with a unit (e.g. 40GiB) or a fraction of free memory (e.g. 0.8), got {spec!r}")
    return int(float(match.group(1)) * UNITS[match.group(2)])


HOST_SHARE = 0.9  # of the machine's RAM, leaving the rest to the OS, Python and Redis


def default_host_memory() -> int:
    """The default host budget for pinned copies: a share of the machine's physical RAM."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * HOST_SHARE)
