"""Routing policies: which experts drive a step, and with what weights.

A policy sees the router's logits for one request at one step (or none, when it bypasses the
router) and returns the chosen experts with their weights. Every choice is written to the
request's trace.
"""

from dataclasses import dataclass, field
from typing import Protocol

import torch

from .request import ResolvedRequest, RoutingMode
from .results import TraceStep


@dataclass(frozen=True)
class Choice:
    experts: tuple[int, ...]
    weights: tuple[float, ...]


class RoutingPolicy(Protocol):
    needs_router: bool  # False: `choose` is called with logits=None and the router does not run

    def choose(self, step: int, logits: torch.Tensor | None) -> Choice: ...


class TopK:
    needs_router = True

    def __init__(self, k: int, renormalize: bool = True):
        self.k = k
        self.renormalize = renormalize

    def choose(self, step: int, logits: torch.Tensor) -> Choice:
        probs = torch.softmax(logits.double(), dim=-1)
        top = torch.topk(probs, self.k)
        weights = top.values / top.values.sum() if self.renormalize else top.values
        return Choice(tuple(int(i) for i in top.indices), tuple(float(w) for w in weights))


class FullEnsemble:
    needs_router = True

    def choose(self, step: int, logits: torch.Tensor) -> Choice:
        probs = torch.softmax(logits.double(), dim=-1)
        return Choice(tuple(range(len(probs))), tuple(float(p) for p in probs))


class FixedExpert:
    needs_router = False

    def __init__(self, expert: int):
        self.expert = expert

    def choose(self, step: int, logits: torch.Tensor | None = None) -> Choice:
        return Choice((self.expert,), (1.0,))


class ExpertSchedule:
    """An explicit expert per step (the paper's switching ablation); bypasses the router."""

    needs_router = False

    def __init__(self, schedule: list[int]):
        self.schedule = list(schedule)

    def choose(self, step: int, logits: torch.Tensor | None = None) -> Choice:
        return Choice((self.schedule[step],), (1.0,))


def policy_for(request: ResolvedRequest, renormalize: bool) -> RoutingPolicy:
    """The request's routing mode as a policy (`renormalize`: the model's top-k weighting)."""
    if request.routing is RoutingMode.FIXED:
        return FixedExpert(request.expert)
    if request.routing is RoutingMode.SCHEDULE:
        return ExpertSchedule(request.expert_schedule)
    if request.routing is RoutingMode.ENSEMBLE:
        return FullEnsemble()
    return TopK(request.top_k, renormalize)


@dataclass(frozen=True)
class RoutingSummary:
    """Per expert, over all of a generation's steps: the fraction of steps it ran in
    (`step_share`, sums to the experts chosen per step) and its share of the routing weight
    (`weight_share`, sums to 1)."""

    step_share: list[float]
    weight_share: list[float]


@dataclass
class RoutingTrace:
    steps: list[TraceStep] = field(default_factory=list)

    def record(self, step: int, t: float, choice: Choice) -> None:
        self.steps.append(TraceStep(step, t, list(choice.experts), list(choice.weights)))

    def summary(self, num_experts: int) -> RoutingSummary:
        steps, weights = [0.0] * num_experts, [0.0] * num_experts
        for entry in self.steps:
            for e, w in zip(entry.experts, entry.weights):
                steps[e] += 1
                weights[e] += w
        n = max(len(self.steps), 1)
        return RoutingSummary(step_share=[round(v / n, 4) for v in steps], weight_share=[round(v / n, 4) for v in weights])
