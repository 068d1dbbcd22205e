"""What the engine hands back: per-tick events and the finished generation's result."""

from dataclasses import dataclass

import numpy as np

from .request import ResolvedRequest
from .routing import RoutingSummary, RoutingTrace


@dataclass(frozen=True)
class ResidencyDelta:
    """Weight traffic while one generation ran (shared with whatever ran beside it)."""

    expert_loads: int
    bytes_to_device: int
    max_waited_ticks: int

    def to_dict(self) -> dict[str, int]:
        return {"expert_loads_while_running": self.expert_loads,
                "bytes_to_device_while_running": self.bytes_to_device,
                "max_waited_ticks": self.max_waited_ticks}


@dataclass
class GenerationResult:
    frames: np.ndarray  # uint8 (F, H, W, 3)
    request: ResolvedRequest
    trace: RoutingTrace
    routing: RoutingSummary
    residency: ResidencyDelta

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
