"""Child processes that die with the process that started them (the embedded Valkey, the workers
of `paris serve`): on Linux the kernel sends them a signal when their parent dies, even by kill -9
(prctl PR_SET_PDEATHSIG), so no orphan keeps running or keeps the data dir's Valkey busy.

The signal fires when the *thread* that started the child ends, so start children from a thread
that lives as long as they should (the main thread, or a supervisor thread that never returns
while its child should run)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
# `paris worker`'s exit status when it cannot serve the model within its budget: `paris serve` does
# not restart such a child (restarting it would not help) and stops
EXIT_REFUSED = 3


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess.Popen: the child receives `sig` when its parent dies.
    None where the platform has no parent-death signal (the child then outlives a killed parent)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec
