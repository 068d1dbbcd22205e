"""Block streaming: an expert the plan does not keep on the device runs with its blocks passing
through a window of device buffers, each block copied from the component's host slab while the
blocks before it compute. One pass over the blocks serves every row of the forward.

Forward hooks on the expert and on its DoubleStreamBlock/SingleStreamBlock modules do it, so
neither the model's forward nor the engine changes. As the expert's forward starts, its stem
(everything outside the blocks: embedders and final layer, ~0.1 GB at 11B) and its first
`window` blocks are issued; before block i runs, block i + window - 1 is issued and block i
waited for; after it, block i's buffer is freed and its tensors point at the slab again. At most
`window` blocks and the stem are on the device at once. A block's copy starts once the compute
issued before its buffer was taken is done (transfers.py): with window W, the copy of block i
overlaps the compute of blocks i-W+1 .. i-1.

Why not diffusers' group offloading (`diffusers.hooks.apply_group_offloading`, 0.42), which
takes a plain nn.Module and does the same at heart:
- it pins a copy of every tensor of its own (`pin_memory()` per tensor: the power-of-two
  rounding of gpu-readiness B1, and a second host copy beside the slab residency keeps);
- it onloads under the side stream (the buffers land in that stream's memory pool, B3), looks
  one group ahead only, and blocks the host on the side stream before each onload;
- once applied it streams every forward, where the plan streams some experts and keeps others;
- it counts nothing, and the engine reports the bytes each tick moves.
What it would save is the hook wiring below; the slab, the window and the counters it lacks.
"""

from functools import partial

from torch import nn

from ..models.layers import DoubleStreamBlock, SingleStreamBlock
from .slab import HostSlab
from .transfers import Transfers

STREAMED_BLOCKS = (DoubleStreamBlock, SingleStreamBlock)


def streamed_blocks(module: nn.Module) -> list[nn.Module]:
    """The blocks a streamed pass moves one by one, in forward order (registration order)."""
    return [m for m in module.modules() if isinstance(m, STREAMED_BLOCKS)]


class BlockStream:
    """Streams `module` through a window of `window` blocks; counts into `stats`
    (`bytes_streamed`, `blocks_streamed`, `bytes_to_device`)."""

    def __init__(self, module: nn.Module, slab: HostSlab, transfers: Transfers, window: int, stats):
        if window < 1:
            raise ValueError(f"a streaming window holds at least one block, got {window}")
        self.slab, self.transfers, self.window, self.stats = slab, transfers, window, stats
        self.units = slab.layout.units  # 0: the stem; i >= 1: block i - 1
        self._flight: dict[int, tuple] = {}  # unit -> (device buffer, pending copy)
        self._issued = 0  # units before this one were issued in this pass
        module.register_forward_pre_hook(self._begin)
        module.register_forward_hook(self._end, always_call=True)
        for index, block in enumerate(streamed_blocks(module), start=1):
            block.register_forward_pre_hook(partial(self._enter, index))
            block.register_forward_hook(partial(self._leave, index), always_call=True)

    def _issue(self, index: int) -> None:
        unit = self.units[index]
        buffer = self.transfers.alloc(unit.nbytes)
        self._flight[index] = (buffer, self.transfers.ahead([(buffer, self.slab.unit(unit))]))
        self.stats.bytes_streamed += unit.nbytes
        self.stats.bytes_to_device += unit.nbytes
        self.stats.blocks_streamed += index > 0

    def _issue_through(self, last: int) -> None:
        while self._issued <= min(last, len(self.units) - 1):
            self._issue(self._issued)
            self._issued += 1

    def _use(self, index: int) -> None:
        if index not in self._flight:  # a block run out of order, or twice: fetched now
            self._issue(index)
        buffer, pending = self._flight[index]
        self.transfers.wait(pending)
        unit = self.units[index]
        for segment in unit.segments:
            segment.tensor.data = segment.view(buffer, unit.start)

    def _release(self, index: int) -> None:
        if index in self._flight:  # not when issuing it failed
            _, pending = self._flight.pop(index)
            self.transfers.wait(pending)  # a unit issued but never used (the forward raised) too
        self.slab.point_at(self.units[index])

    def _begin(self, module, args) -> None:
        self._issued = 0
        self._issue_through(self.window)  # the stem and the first `window` blocks
        self._use(0)

    def _enter(self, index: int, block, args) -> None:
        self._issue_through(index + self.window - 1)
        self._use(index)

    def _leave(self, index: int, block, args, output) -> None:
        self._release(index)

    def _end(self, module, args, output) -> None:
        for index in list(self._flight):
            self._release(index)
