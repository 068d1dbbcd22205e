"""Prometheus metrics. Every process writes counters and histograms into one Redis hash (so every
worker on every machine contributes); the API's /metrics reads them at scrape time
(server/api/metrics_scrape.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import redis

if TYPE_CHECKING:
    from pipeline.results import WeightTraffic
    from pipeline.routing import RoutingTrace

STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class Metrics:
    """Counters and histograms in a Redis hash, one field per `name|label`. Each write goes into
    the caller's pipeline when one is given (the worker's per-step round trip), else it is sent
    at once; a write that fails is dropped: a lost count must not fail the job it counts."""

    def __init__(self, client: redis.Redis, key: str):
        self.redis = client
        self.key = key

    @contextmanager
    def _writes(self, pipe: redis.client.Pipeline | None) -> Iterator[redis.client.Pipeline]:
        if pipe is not None:
            yield pipe
            return
        own = self.redis.pipeline(transaction=False)
        yield own
        try:
            own.execute()
        except redis.RedisError:
            pass  # metrics are best effort: a lost count must never fail the job it describes

    def count(self, name: str, label: str = "", by: float = 1, pipe: redis.client.Pipeline | None = None) -> None:
        with self._writes(pipe) as p:
            p.hincrbyfloat(self.key, f"{name}|{label}", by)

    def observe(self, name: str, seconds: float, buckets: tuple[float, ...],
                pipe: redis.client.Pipeline | None = None) -> None:
        with self._writes(pipe) as p:
            for b in buckets:
                if seconds <= b:
                    p.hincrbyfloat(self.key, f"{name}_bucket|{b}", 1)
            p.hincrbyfloat(self.key, f"{name}_count|", 1)
            p.hincrbyfloat(self.key, f"{name}_sum|", seconds)

    def count_routing(self, trace: RoutingTrace, pipe: redis.client.Pipeline | None = None) -> None:
        """One `expert_steps_total` per expert per step it ran in (the expert load)."""
        steps = Counter(str(expert) for step in trace.steps for expert in step.experts)
        with self._writes(pipe) as p:
            for expert, n in steps.items():
                p.hincrbyfloat(self.key, f"expert_steps_total|{expert}", n)

    def values(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.redis.hgetall(self.key).items()}


class WeightMoves:
    """Adds a worker's weight traffic to the shared counters: the engine reports running totals
    (Engine.weight_traffic), so each call adds what is new since the last one."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._counted: dict[tuple[str, str], float] = {}

    def add(self, traffic: WeightTraffic, pipe: redis.client.Pipeline | None = None) -> None:
        totals = {("component_loads_total", name): n for name, n in traffic.device_loads.items()}
        totals["bytes_to_device_total", ""] = traffic.bytes_to_device
        totals["bytes_from_disk_total", ""] = traffic.bytes_from_disk
        totals["bytes_streamed_total", ""] = traffic.bytes_streamed
        for (name, label), total in totals.items():
            delta = total - self._counted.get((name, label), 0)
            if delta:
                self.metrics.count(name, label, delta, pipe)
                self._counted[name, label] = total
