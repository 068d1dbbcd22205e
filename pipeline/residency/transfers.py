"""Host-to-device copies, as the residency manager and the block streamer issue them.

The interface is CUDA's (pinned slabs, copies ordered on the compute stream or issued ahead on
a side stream, a pending copy the compute stream waits for before it reads); `Transfers` is its
twin without streams, for CPU (and meta) devices: nothing to pin, every copy done at once,
nothing to wait for. The managers above run the same code on both, so the CPU tests cover
their logic; the CUDA-only part is `cuda.CudaTransfers` alone.
"""

import torch


class Transfers:
    """Copies for a device that is host memory itself (CPU), or that has no memory (meta)."""

    overlaps = False  # whether a copy issued ahead runs while compute does (prefetching pays)

    def __init__(self, device: torch.device):
        self.device = device
        self.host = torch.device("meta") if device.type == "meta" else torch.device("cpu")

    def pin(self, storage: torch.Tensor) -> None:
        """Page-lock a slab so copies from it are asynchronous (CUDA only)."""

    def unpin(self, storage: torch.Tensor) -> None:
        """Undo `pin`; no copy from `storage` may be in flight (CUDA only)."""

    def alloc(self, nbytes: int) -> torch.Tensor:
        """A destination buffer on the device, from the compute stream's pool."""
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """One copy, ordered on the current stream (the only one here)."""
        dst.copy_(src)

    def ahead(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]):
        """Issues the copies (dst, src) ahead of the compute that will read them; returns what
        `wait` takes. Here they are done at once and there is nothing to wait for."""
        for dst, src in pairs:
            self.copy(dst, src)
        return None

    def wait(self, pending) -> None:
        """Orders the compute stream after a pending copy (before it reads or frees the buffer)."""


def transfers_for(device: torch.device) -> Transfers:
    if device.type == "cuda":
        from .cuda import CudaTransfers

        return CudaTransfers(device)
    return Transfers(device)
