"""A completed job's results as the server keeps and returns them: the records on `Job` (stored as
JSON in the job's hash, server/queue/jobs.py) and, unchanged, on the Video object and at
`/v1/videos/{id}/trace` (server/api/schemas.py: their OpenAPI schemas are these). `jobs.completion`
makes them from the engine's result; the routing trace (`pipeline.results.TraceStep`) and the
expert work (`pipeline.results.ComputeCounts`) are kept as the engine recorded them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Routing:
    """The routing policy and, per expert (by index), the share of steps it ran in and of the
    routing weight; the full per-step trace is at `trace_url`."""

    policy: str
    top_k: int
    step_share: dict[str, float]
    expert_share: dict[str, float]  # the old name of step_share, kept: the README promises it to clients
    weight_share: dict[str, float]
    steps: int
    trace_url: str


@dataclass(frozen=True)
class Residency:
    """Expert loads and weight bytes moved to the device while the job ran (shared with whatever
    ran beside it), and the most ticks it waited for its expert."""

    expert_loads_while_running: int
    bytes_to_device_while_running: int
    max_waited_ticks: int
