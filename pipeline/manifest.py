"""The model folder's `model.json`: components, sampling defaults and limits."""

import json
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ModelFolderError
from .speed import Speed


class DType(StrEnum):
    """The weight dtypes a manifest may name (checkpoint.TORCH_DTYPES maps each to torch's).
    Named here, not there, so that reading a manifest (the API does) never imports torch."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class Component(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cls: str = Field(alias="class")
    path: str
    tokenizer: str | None = None
    max_length: int | None = None
    dtype: DType = DType.FP32
    name: str | None = None


def expert_key(index: int) -> str:
    """The registry name of expert `index` (residency, engine, loader and verify use it)."""
    return f"expert_{index}"


def is_expert_key(name: str) -> bool:
    return name.startswith("expert_")


class Components(BaseModel):
    model_config = ConfigDict(extra="forbid")
    t5: Component
    clip: Component
    dinov2: Component | None = None
    vae: Component
    router: Component | None = None  # None: a one-expert model (Open-Sora 2.0); every request uses it
    experts: list[Component] = Field(min_length=1)

    @model_validator(mode="after")
    def _routerless_models_have_one_expert(self):
        if self.router is None and len(self.experts) != 1:
            raise ValueError(f"a model without a router has one expert, this one names {len(self.experts)}")
        return self

    def named(self) -> dict[str, Component]:
        """Every component under its registry name: t5, clip, dinov2 (if any), vae, router (if
        any), expert_0, expert_1, ..."""
        named = {"t5": self.t5, "clip": self.clip, "vae": self.vae}
        if self.router is not None:
            named["router"] = self.router
        if self.dinov2 is not None:
            named["dinov2"] = self.dinov2
        named.update({expert_key(i): e for i, e in enumerate(self.experts)})
        return named


class SamplingDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    image_guidance_scale: float = 3.0
    guidance_oscillation: bool = False
    fps: int = 24
    num_frames: int = 129
    size: str = "256x256"
    top_k: int = 1
    negative_prompt: str = ""
    prompt_template: str = "{prompt}"
    speed: Speed = Speed.QUALITY
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # t range where the unconditional branches run

    @field_validator("guidance_interval")
    @classmethod
    def _interval(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= v[0] <= v[1] <= 1.0:
            raise ValueError("guidance_interval must be [t_low, t_high] with 0 <= t_low <= t_high <= 1")
        return v


class Limits(BaseModel):
    """Frame counts are 4k+1 (the VAE's causal temporal compression) up to `max_frames`;
    sizes are the listed "WxH" values, each a multiple of `size_multiple` (VAE x patch).

    `resolve` validates requests with these alone (no weights needed); the VAE config is the
    source of the geometry, and `geometry_problems` checks that the two agree when a model
    folder is loaded or verified."""

    model_config = ConfigDict(extra="forbid")
    sizes: list[str] = Field(min_length=1)
    max_frames: int = 129
    temporal_compression: int = 4
    size_multiple: int = 16
    max_steps: int = 100
    max_fps: int = 60
    max_prompt_chars: int = 4000

    def geometry_problems(self, spatial_compression: int, temporal_compression: int, patch_size: int) -> list[str]:
        """Every way these limits disagree with the VAE's compression and the expert's patch."""
        problems = []
        if self.temporal_compression != temporal_compression:
            problems.append(f"limits.temporal_compression is {self.temporal_compression}, "
                            f"but the VAE compresses time by {temporal_compression}")
        pixels_per_token = spatial_compression * patch_size
        if self.size_multiple % pixels_per_token:
            problems.append(f"limits.size_multiple is {self.size_multiple}, not a multiple of the VAE's spatial "
                            f"compression x the expert's patch size ({spatial_compression} x {patch_size} = {pixels_per_token})")
        for size in self.sizes:
            try:
                width, height = parse_size(size)
            except ValueError:
                problems.append(f"limits.sizes: {size!r} is not WIDTHxHEIGHT")
                continue
            if width % self.size_multiple or height % self.size_multiple:
                problems.append(f"limits.sizes: {size} is not a multiple of limits.size_multiple ({self.size_multiple})")
        return problems


class Routing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    renormalize: bool = True


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    format: Literal["paris-ddm/1"] = "paris-ddm/1"
    description: str = ""
    examples: list[str] = []  # prompts that show what the model does (the playground offers them)
    components: Components
    sampling: SamplingDefaults = SamplingDefaults()
    limits: Limits
    routing: Routing = Routing()


def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / "model.json"
    if not path.is_file():
        raise ModelFolderError(f"{path}: model.json not found (is {folder} a model folder?)")
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ModelFolderError(f"{path}: {exc}") from exc


def parse_size(size: str) -> tuple[int, int]:
    """'WxH' -> (width, height)."""
    w, _, h = size.lower().partition("x")
    return int(w), int(h)
