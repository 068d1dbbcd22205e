"""Speed presets: one request field (`speed`) that trades a measured amount of quality for fewer
expert forwards, by step caching (pipeline/step_cache.py) and a guidance interval.

Torch-free: the API resolves requests with it.
"""

from dataclasses import dataclass
from enum import StrEnum


class Speed(StrEnum):
    QUALITY = "quality"  # every row computes every block at every step: the model's own output
    BALANCED = "balanced"
    FAST = "fast"


@dataclass(frozen=True)
class CachePolicy:
    """When a row (request x expert x guidance branch) may reuse its cached residual.

    A row reuses while the relative L1 changes of its first block's modulated input, summed
    since the row last computed, stay below `threshold`; never in the first `warmup` share of
    the steps or the last step, and for at most `max_reuse` steps in a row."""

    threshold: float = 0.0  # 0: never reuse
    warmup: float = 0.0  # share of the steps at the start that always compute
    max_reuse: int = 0

    @property
    def enabled(self) -> bool:
        return self.threshold > 0 and self.max_reuse > 0

    def warmup_steps(self, total: int) -> int:
        return max(1, round(self.warmup * total))


@dataclass(frozen=True)
class SpeedPreset:
    cache: CachePolicy
    guidance_interval: tuple[float, float] | None  # None: the model's default interval


# Calibrated on paris-mini at 50 steps (tests/benchmarks/bench_speed_presets.py; README, "Speed
# presets"). The interval only drops the unconditional branches near the end (t < t_low), where
# they move the video least; dropping them early (high t) changes what the video shows.
PRESETS: dict[Speed, SpeedPreset] = {
    Speed.QUALITY: SpeedPreset(CachePolicy(), None),
    Speed.BALANCED: SpeedPreset(CachePolicy(threshold=0.05, warmup=0.1, max_reuse=2), (0.1, 1.0)),
    Speed.FAST: SpeedPreset(CachePolicy(threshold=0.1, warmup=0.1, max_reuse=3), (0.15, 1.0)),
}
