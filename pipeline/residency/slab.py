"""One host allocation per component: every parameter and buffer a view into it.

Pinning each tensor separately costs ~1.5x the weights: PyTorch's pinned allocator rounds
every block up to a power of two (gpu-readiness B1). A component's weights are instead laid out
in one byte range at aligned offsets (`Layout`), held in one allocation of exactly that size
(`HostSlab`), pinned once by the transfer backend. The layout groups tensors into units, the
module's stem (everything outside its blocks) first and then each block in forward order, so a
unit is one contiguous range: one copy brings a block to the device, and a device buffer with
the same layout holds a whole component.
"""

from dataclasses import dataclass

import torch
from torch import nn

ALIGN = 256  # bytes: what cudaMalloc guarantees, and the most cuBLASLt's kernel choice looks at


@dataclass(frozen=True)
class Segment:
    """One tensor's place in the layout."""

    tensor: torch.Tensor  # the module's parameter or buffer (its `.data` is what moves)
    offset: int
    nbytes: int

    def view(self, buffer: torch.Tensor, base: int = 0) -> torch.Tensor:
        """This tensor inside `buffer`, a uint8 tensor holding the layout from byte `base` on."""
        start = self.offset - base
        return buffer[start : start + self.nbytes].view(self.tensor.dtype).view(self.tensor.shape)


@dataclass(frozen=True)
class Unit:
    """A contiguous range of the layout moved as one: the stem, or one block."""

    segments: tuple[Segment, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def unique_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer once (tied weights are one tensor)."""
    seen, out = set(), []
    for tensor in list(module.parameters()) + list(module.buffers()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out.append(tensor)
    return out


class Layout:
    """Where each tensor of a module lives in its slab: units in order, each tensor aligned."""

    def __init__(self, module: nn.Module, blocks: list[nn.Module]):
        in_blocks = [unique_tensors(b) for b in blocks]
        claimed = {id(t) for group in in_blocks for t in group}
        stem = [t for t in unique_tensors(module) if id(t) not in claimed]
        units, offset = [], 0
        for group in [stem, *in_blocks]:
            start, segments = offset, []
            for tensor in group:
                nbytes = tensor.numel() * tensor.element_size()
                segments.append(Segment(tensor, offset, nbytes))
                offset = align(offset + nbytes)
            units.append(Unit(tuple(segments), start, offset))
        self.units: list[Unit] = units
        self.nbytes = offset

    @property
    def segments(self) -> list[Segment]:
        return [s for u in self.units for s in u.segments]

    @property
    def raw_bytes(self) -> int:
        """The tensors' own bytes, without the alignment padding."""
        return sum(s.nbytes for s in self.segments)


class HostSlab:
    """A component's weights in one host allocation (`storage`, uint8), laid out by `layout`."""

    def __init__(self, layout: Layout, storage: torch.Tensor):
        self.layout = layout
        self.storage = storage

    @property
    def nbytes(self) -> int:
        return self.layout.nbytes

    def unit(self, unit: Unit) -> torch.Tensor:
        return self.storage[unit.start : unit.end]

    def point_at(self, unit: Unit | None = None) -> None:
        """The tensors of `unit` (default: all) read from the slab again."""
        for segment in self.layout.segments if unit is None else unit.segments:
            segment.tensor.data = segment.view(self.storage)

    @classmethod
    def adopt(cls, module: nn.Module, blocks: list[nn.Module], host: torch.device) -> "HostSlab":
        """Copies `module`'s tensors into a new slab and points them at it. All or nothing: if
        allocating or a copy fails, the module is left as it was."""
        layout = Layout(module, blocks)
        storage = torch.empty(layout.nbytes, dtype=torch.uint8, device=host)
        views = [segment.view(storage) for segment in layout.segments]
        for segment, view in zip(layout.segments, views):
            view.copy_(segment.tensor.data)
        slab = cls(layout, storage)
        slab.point_at()
        return slab
