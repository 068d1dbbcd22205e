"""The CUDA-only part of residency: pinned slabs, and copies ahead of compute on a side stream.

- `pin` page-locks a slab's exact bytes with cudaHostRegister. PyTorch's pinned allocator
  (`pin_memory()`) would round each allocation up to a power of two (gpu-readiness B1).
- `alloc` takes device buffers while the compute stream is current, so weights copied ahead of
  time and activations share one caching-allocator pool (B3: a buffer allocated under the side
  stream belongs to its pool, and freed blocks do not move between pools).
- `ahead` makes the side stream wait for the compute work issued so far (a buffer just taken
  may be memory that work freed: the allocator hands it out in the compute stream's order
  only), copies there, and returns an event marking the end.
- `wait` orders the compute stream after that event. Every buffer is read and freed on the
  compute stream after this wait, so no `record_stream` is needed: the allocator never holds a
  block that a stream it does not know may still use.
Its twin without streams is `transfers.Transfers`; the tests compare the managers on it.
"""

import torch

from .transfers import Transfers


def _check(error, call: str) -> None:
    if int(error) != 0:
        raise RuntimeError(f"{call} failed with CUDA error {int(error)}")


class CudaTransfers(Transfers):
    overlaps = True

    def __init__(self, device: torch.device):
        super().__init__(device)
        self.side = torch.cuda.Stream(device)

    def pin(self, storage: torch.Tensor) -> None:
        if storage.numel():
            with torch.cuda.device(self.device):  # the runtime call runs in the current device's context
                _check(torch.cuda.cudart().cudaHostRegister(storage.data_ptr(), storage.numel(), 0), "cudaHostRegister")

    def unpin(self, storage: torch.Tensor) -> None:
        with torch.cuda.device(self.device):
            # no copy may still read the pages: those issued ahead (side stream) and a whole
            # component's copies on the compute stream (gpu-review-2 N4); dropping a host copy is
            # rare (the host budget is full), so waiting for both streams costs little
            self.side.synchronize()
            torch.cuda.current_stream(self.device).synchronize()
            if storage.numel():
                _check(torch.cuda.cudart().cudaHostUnregister(storage.data_ptr()), "cudaHostUnregister")

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src, non_blocking=True)

    def ahead(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.cuda.Event:
        self.side.wait_stream(torch.cuda.current_stream(self.device))
        done = torch.cuda.Event()
        try:
            with torch.cuda.stream(self.side):
                for dst, src in pairs:
                    self.copy(dst, src)
        except BaseException:
            done.record(self.side)
            self.wait(done)  # the caller frees the buffers: not before the copies issued are done
            raise
        done.record(self.side)
        return done

    def wait(self, pending: torch.cuda.Event | None) -> None:
        if pending is not None:
            torch.cuda.current_stream(self.device).wait_event(pending)
