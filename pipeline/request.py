"""A generation request, and its resolution against a model's defaults and limits.

`resolve` is pure (manifest only, no weights): the API resolves once, with exactly the rules the
engine relies on, and the queue carries the `ResolvedRequest` (`to_json` / `from_json`). The
prompt is kept as the user wrote it; the engine applies the model's prompt template when it
encodes, so nothing here can apply it twice.
"""

import dataclasses
import json
import random
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from PIL import Image

from .errors import InvalidRequest
from .manifest import Manifest, parse_size
from .request_fields import param, request_fields
from .speed import PRESETS, Speed

MAX_SEED = 2**63 - 1


class RoutingMode(StrEnum):
    TOP_K = "top_k"
    ENSEMBLE = "ensemble"
    FIXED = "fixed"
    SCHEDULE = "schedule"


@dataclass
class GenerationRequest:
    """What a caller asks for; None: the model's default. Each field is declared once, here: its
    `param` says how the HTTP body, the CLI flags and the client spell it (pipeline/request_fields.py),
    and `resolve` below gives it its meaning. The order is the HTTP body's (a 400 names the first
    invalid field)."""

    prompt: str = param(required=True, flag="prompt")
    image: Image.Image | None = param(flag="--image", help="first frame (image-to-video)", file=True)
    num_frames: int | None = param(flag="--frames")
    size: str | None = param(help="WIDTHxHEIGHT")
    seed: int | None = param()
    negative_prompt: str | None = param()
    num_inference_steps: int | None = param(flag="--steps")
    guidance_scale: float | None = param(flag="--guidance")
    image_guidance_scale: float | None = param(flag="--image-guidance")
    guidance_oscillation: bool | None = param(flag="--oscillate", help="guidance oscillation")
    fps: int | None = param()
    top_k: int | None = param()
    routing: RoutingMode | str | None = param(help="default: top_k (fixed for a model without a router)")
    expert: int | None = param(help="with --routing fixed")
    expert_schedule: list[int] | None = param(flag="--schedule", listed="comma-separated expert indices, e.g. '0,2,1'",
                                              help="comma-separated expert per step (with --routing schedule)")
    speed: Speed | str | None = param(help="speed preset (default: the model's)")
    guidance_interval: list[float] | tuple[float, float] | None = param(
        listed="two comma-separated numbers, e.g. '0.1,0.8'",
        help="T_LOW,T_HIGH: the unconditional branches run only while t is inside")


REQUEST_FIELDS = request_fields(GenerationRequest)


@dataclass
class ResolvedRequest:
    """Every field filled and checked. `image` is the decoded first frame (image-to-video); it is
    not serialised: the queue carries it as an artifact, and `has_image` says one belongs here."""

    prompt: str
    negative_prompt: str
    image: Image.Image | None
    num_frames: int
    width: int
    height: int
    fps: int
    num_inference_steps: int
    guidance_scale: float
    image_guidance_scale: float
    guidance_oscillation: bool
    seed: int
    routing: RoutingMode
    top_k: int
    expert: int | None
    expert_schedule: list[int] | None = field(default=None)
    # defaults for requests queued before these fields existed
    speed: Speed = Speed.QUALITY
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # unconditional branches run while low <= t <= high

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def seconds(self) -> float:
        return (self.num_frames - 1) / self.fps

    def to_json(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "image"}
        return json.dumps({**fields, "has_image": self.has_image})  # enums as their values

    @classmethod
    def from_json(cls, text: str, image: Image.Image | None = None) -> "ResolvedRequest":
        """The request `to_json` wrote; `image` is its first frame, read back from the artifact
        store (it must be given exactly when the request had one). Fields it lacks (queued before
        they existed) take their defaults."""
        data = json.loads(text)
        if data.pop("has_image") != (image is not None):
            raise ValueError("the first frame must be given exactly when the request had one")
        hints = typing.get_type_hints(cls)
        return cls(**{name: _from_json(hints.get(name), value) for name, value in data.items()}, image=image)


def _from_json(annotation, value):
    """A field's JSON value as its type: an enum from its value, a tuple from a list."""
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return annotation(value)
    if typing.get_origin(annotation) is tuple:
        return tuple(value)
    return value


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise InvalidRequest(param, message)


# Routing modes that read the router's logits.
ROUTED = (RoutingMode.TOP_K, RoutingMode.ENSEMBLE)


def _routing_mode(manifest: Manifest, requested: RoutingMode | str | None) -> RoutingMode:
    """The request's routing mode, or the model's default: top-k, or fixed (on the one expert)
    for a model without a router, which cannot serve the modes that read the router."""
    has_router = manifest.components.router is not None
    if requested is None:
        return RoutingMode.TOP_K if has_router else RoutingMode.FIXED
    modes = [m.value for m in RoutingMode]
    _check(requested in modes, "routing", f"routing must be one of {', '.join(modes)}")
    _check(has_router or requested not in ROUTED, "routing",
           f"model {manifest.name} has no router: routing must be {RoutingMode.FIXED} or {RoutingMode.SCHEDULE}")
    return RoutingMode(requested)


def resolve(manifest: Manifest, request: GenerationRequest) -> ResolvedRequest:
    d, limits = manifest.sampling, manifest.limits
    num_experts = len(manifest.components.experts)

    _check(isinstance(request.prompt, str) and request.prompt.strip() != "", "prompt", "prompt must be a non-empty string")
    _check(len(request.prompt) <= limits.max_prompt_chars, "prompt", f"prompt is longer than {limits.max_prompt_chars} characters")
    negative = d.negative_prompt if request.negative_prompt is None else request.negative_prompt
    _check(len(negative) <= limits.max_prompt_chars, "negative_prompt", "negative_prompt is too long")

    frames = d.num_frames if request.num_frames is None else request.num_frames
    tc = limits.temporal_compression
    _check(isinstance(frames, int) and frames >= 1 and (frames - 1) % tc == 0, "num_frames",
           f"num_frames must be {tc}k+1 (1, {tc + 1}, {2 * tc + 1}, ...), got {frames}")
    _check(frames <= limits.max_frames, "num_frames", f"num_frames must be at most {limits.max_frames}, got {frames}")

    size = d.size if request.size is None else request.size
    try:
        width, height = parse_size(size)
    except (ValueError, AttributeError):
        raise InvalidRequest("size", f"size must look like 'WIDTHxHEIGHT', got {size!r}") from None
    m = limits.size_multiple
    _check(width > 0 and height > 0 and width % m == 0 and height % m == 0, "size",
           f"width and height must be positive multiples of {m}, got {size}")
    _check(f"{width}x{height}" in limits.sizes, "size", f"size {size} is not supported; supported: {', '.join(limits.sizes)}")

    fps = d.fps if request.fps is None else request.fps
    _check(isinstance(fps, int) and 1 <= fps <= limits.max_fps, "fps", f"fps must be between 1 and {limits.max_fps}")

    steps = d.num_inference_steps if request.num_inference_steps is None else request.num_inference_steps
    _check(isinstance(steps, int) and 1 <= steps <= limits.max_steps, "num_inference_steps",
           f"num_inference_steps must be between 1 and {limits.max_steps}")

    guidance = d.guidance_scale if request.guidance_scale is None else request.guidance_scale
    _check(0.0 <= guidance <= 50.0, "guidance_scale", "guidance_scale must be between 0 and 50")
    image_guidance = d.image_guidance_scale if request.image_guidance_scale is None else request.image_guidance_scale
    _check(0.0 <= image_guidance <= 50.0, "image_guidance_scale", "image_guidance_scale must be between 0 and 50")
    if request.image is not None:
        _check(manifest.components.dinov2 is not None, "input_reference", f"model {manifest.name} does not take a first frame")

    seed = random.SystemRandom().randrange(MAX_SEED) if request.seed is None else request.seed
    _check(isinstance(seed, int) and 0 <= seed <= MAX_SEED, "seed", f"seed must be an integer in [0, {MAX_SEED}]")

    top_k = d.top_k if request.top_k is None else request.top_k
    _check(isinstance(top_k, int) and 1 <= top_k <= num_experts, "top_k", f"top_k must be between 1 and {num_experts}")
    routing = _routing_mode(manifest, request.routing)
    expert, schedule = request.expert, request.expert_schedule
    if request.routing is None and routing is RoutingMode.FIXED:
        expert = 0  # the default of a model without a router: its one expert
    if routing is RoutingMode.FIXED:
        _check(isinstance(expert, int) and 0 <= expert < num_experts, "expert", f"expert must be between 0 and {num_experts - 1}")
    if routing is RoutingMode.SCHEDULE:
        _check(schedule is not None and len(schedule) == steps, "expert_schedule",
               f"expert_schedule must name one expert per step ({steps} entries)")
        _check(all(isinstance(e, int) and 0 <= e < num_experts for e in schedule), "expert_schedule",
               f"expert_schedule entries must be between 0 and {num_experts - 1}")

    speeds = [s.value for s in Speed]
    speed = d.speed if request.speed is None else request.speed
    _check(speed in speeds, "speed", f"speed must be one of {', '.join(speeds)}")
    speed = Speed(speed)
    interval = request.guidance_interval
    if interval is None:
        interval = PRESETS[speed].guidance_interval or d.guidance_interval
    _check(_is_interval(interval), "guidance_interval",
           f"guidance_interval must be [t_low, t_high] with 0 <= t_low <= t_high <= 1, got {interval!r}")

    return ResolvedRequest(
        prompt=request.prompt,
        negative_prompt=negative,
        image=request.image,
        num_frames=frames,
        width=width,
        height=height,
        fps=fps,
        num_inference_steps=steps,
        guidance_scale=float(guidance),
        image_guidance_scale=float(image_guidance),
        guidance_oscillation=d.guidance_oscillation if request.guidance_oscillation is None else request.guidance_oscillation,
        seed=seed,
        routing=routing,
        top_k=top_k,
        expert=expert if routing is RoutingMode.FIXED else None,
        expert_schedule=list(schedule) if routing is RoutingMode.SCHEDULE else None,
        speed=speed,
        guidance_interval=(float(interval[0]), float(interval[1])),
    )


def _is_interval(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            and 0.0 <= value[0] <= value[1] <= 1.0)
