"""Failures that must not widen (gpu-review-2 N6) and out-of-memory in the forms CUDA libraries
raise it (N7)."""

import logging

import pytest
import torch
from torch import nn

from pipeline.engine import OUT_OF_MEMORY, failure_code
from pipeline.residency import HostBudgetExceeded, Residency
from pipeline.residency.transfers import Transfers


class Overlapping(Transfers):
    """The CPU twin, claiming overlap as CUDA's copies have it, so that prefetching runs."""

    overlaps = True


def unreadable():
    raise OSError("Input/output error: expert_1/model.safetensors")


def too_big_for_the_host():
    raise HostBudgetExceeded("the host budget cannot hold 23782781056 more bytes")


def pin_refused():
    raise RuntimeError("cudaHostRegister failed with CUDA error 2")


@pytest.mark.parametrize("load", [unreadable, too_big_for_the_host, pin_refused])
def test_a_failed_prefetch_is_logged_and_leaves_everything_as_it_was(load, caplog):
    r = Residency("cpu", budget_bytes=20, transfers=Overlapping(torch.device("cpu")))
    r.register("a", lambda: nn.Linear(2, 1), nbytes=10)
    r.register("b", load, nbytes=10)
    r.get("a")
    with caplog.at_level(logging.WARNING, logger="paris.residency"):
        assert r.prefetch("b", protect={"a"}) is False
    assert r.resident() == ["a"] and not r.is_resident("b") and r.stats.prefetches == 0
    assert any("prefetch of b failed" in rec.getMessage() for rec in caplog.records)
    with pytest.raises((OSError, MemoryError, RuntimeError)):  # the real use still raises, for its own requests
        r.get("b")


@pytest.mark.parametrize("message", [
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "Unable to find a valid cuDNN algorithm to run convolution",
    "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported",
    "CUDA driver error: out of memory",
])
def test_cuda_library_allocation_failures_are_out_of_memory(message):
    assert failure_code(RuntimeError(message), "decode_failed") == OUT_OF_MEMORY


def test_other_errors_keep_their_stage_code():
    assert failure_code(torch.OutOfMemoryError("CUDA out of memory."), "denoise_failed") == OUT_OF_MEMORY
    assert failure_code(RuntimeError("CUDA error: an illegal memory access was encountered"), "denoise_failed") == "denoise_failed"
    assert failure_code(ValueError("out of memory"), "encode_failed") == "encode_failed"  # not a runtime failure


def test_load_seconds_count_disk_reads_not_copy_launches():
    """A device copy is asynchronous on CUDA: a host clock around it would time its launch only."""
    r = Residency("cpu", budget_bytes=10)
    r.register("a", lambda: nn.Linear(2, 1), nbytes=10)
    r.register("b", lambda: nn.Linear(2, 1), nbytes=10)
    r.get("a")
    r.get("b")  # evicts a to its host copy
    read = r.stats.load_seconds
    assert read > 0
    r.get("a")  # from the host copy: a copy, no read
    assert r.stats.load_seconds == read and r.stats.device_loads["a"] == 2
