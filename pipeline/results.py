"""What the engine hands back: per-tick events and the finished generation's result. Torch-free:
the server's queue reads these records (server/queue/results.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .request import ResolvedRequest

if TYPE_CHECKING:  # routing.py holds the policies (torch); the result only carries its records
    from .routing import RoutingSummary, RoutingTrace


@dataclass(frozen=True)
class TraceStep:
    """One denoising step's routing (RoutingTrace.record): the step (0-based), its time, the
    experts chosen and their weights. The server returns these as they are (`/trace`)."""

    step: int
    t: float
    experts: list[int]
    weights: list[float]


@dataclass(frozen=True)
class ResidencyDelta:
    """Weight traffic while one generation ran (shared with whatever ran beside it)."""

    expert_loads: int
    bytes_to_device: int
    max_waited_ticks: int


@dataclass(frozen=True)
class WeightTraffic:
    """The weights the engine moved since it started, running totals (Engine.weight_traffic):
    arrivals on the device per component, bytes copied to the device (streamed ones included),
    read from disk, and streamed."""

    device_loads: dict[str, int]
    bytes_to_device: int
    bytes_from_disk: int
    bytes_streamed: int


@dataclass
class ComputeCounts:
    """The expert work one generation ran and skipped. A row-forward is one guidance branch of
    the request through one chosen expert at one step; a block-forward is one row through one
    transformer block. Skipped is measured against every branch of the request's guidance at
    every step through every block: branches the guidance interval or oscillation left out, and
    blocks a row did not run because it reused its cached residual (pipeline/step_cache.py)."""

    row_forwards: int = 0
    row_forwards_skipped: int = 0
    block_forwards: int = 0
    block_forwards_skipped: int = 0

    def ran_row(self, blocks: int, of: int) -> None:
        self.row_forwards += 1
        self.block_forwards += blocks
        self.block_forwards_skipped += of - blocks

    def skipped_rows(self, rows: int, blocks_per_row: int) -> None:
        self.row_forwards_skipped += rows
        self.block_forwards_skipped += rows * blocks_per_row

    def summary(self) -> str:
        rows, blocks = self.row_forwards, self.block_forwards
        return (f"{rows} of {rows + self.row_forwards_skipped} row-forwards, "
                f"{blocks} of {blocks + self.block_forwards_skipped} block-forwards "
                f"({blocks / max(1, blocks + self.block_forwards_skipped):.0%})")

    def to_dict(self) -> dict[str, int]:
        return {"row_forwards": self.row_forwards, "row_forwards_skipped": self.row_forwards_skipped,
                "block_forwards": self.block_forwards, "block_forwards_skipped": self.block_forwards_skipped}


@dataclass
class GenerationResult:
    frames: np.ndarray  # uint8 (F, H, W, 3)
    request: ResolvedRequest
    trace: RoutingTrace
    routing: RoutingSummary
    residency: ResidencyDelta
    compute: ComputeCounts

    @property
    def fps(self) -> int:
        return self.request.fps

    @property
    def seed(self) -> int:
        return self.request.seed


@dataclass
class Progress:
    job_id: str
    step: int                    # steps done (1-based): trace step `step - 1` just ran
    total: int
    experts: tuple[int, ...]     # that step's chosen experts and their routing weights
    weights: tuple[float, ...]


@dataclass
class Finished:
    job_id: str
    result: GenerationResult


@dataclass
class Failed:
    job_id: str
    message: str
    code: str = "generation_failed"


Event = Progress | Finished | Failed
