"""One generation inside the engine: its latents, conditioning, schedule and routing so far."""

from dataclasses import dataclass, field

import torch

from .manifest import expert_key
from .request import ResolvedRequest
from .results import ComputeCounts
from .routing import Choice, RoutingPolicy, RoutingTrace
from .step_cache import StepCache


@dataclass(frozen=True)
class TextEmbedding:
    tokens: torch.Tensor  # T5 last hidden state (1, L, D)
    pooled: torch.Tensor  # CLIP pooled output (1, V)


@dataclass(eq=False)  # compared by identity: it holds tensors
class RequestState:
    job_id: str
    request: ResolvedRequest
    policy: RoutingPolicy
    latents: torch.Tensor  # (1, C, T, h, w) float32
    timesteps: list[float]  # num_inference_steps + 1, from 1 (noise) down to 0
    prompt: TextEmbedding  # the prompt with the model's template applied
    negative: TextEmbedding  # the negative prompt (the unconditional branches read it)
    img_ids: torch.Tensor  # (1, N, 3) positions of the latent's patches
    step_cache: StepCache  # residuals its rows may reuse (pipeline/step_cache.py)
    first_frame_cond: torch.Tensor | None = None  # i2v: packed mask + first-frame latent (1, N, (C+1) p^2)
    first_frame_latent: torch.Tensor | None = None  # i2v: (1, C, 1, h, w), replaces latent frame 0 at decode
    image_feature: torch.Tensor | None = None  # i2v: DINOv2 feature of the first frame (1, F), for the router
    step: int = 0
    trace: RoutingTrace = field(default_factory=RoutingTrace)
    choice: Choice | None = None  # this step's experts, kept while the request waits
    waited: int = 0  # consecutive ticks without a step
    max_waited: int = 0
    loads_at_start: tuple[int, int] = (0, 0)  # (expert loads, bytes to device) when it started
    compute: ComputeCounts = field(default_factory=ComputeCounts)

    @property
    def total(self) -> int:
        return self.request.num_inference_steps

    @property
    def t(self) -> float:
        return self.timesteps[self.step]

    @property
    def t_next(self) -> float:
        return self.timesteps[self.step + 1]

    @property
    def done(self) -> bool:
        return self.step >= self.total

    def expert_keys(self) -> frozenset[str]:
        """The registry names of the experts this step's choice needs."""
        return frozenset(expert_key(e) for e in self.choice.experts)
