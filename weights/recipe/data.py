"""Synthetic clips: one solid shape on black, moving in one of three motion clusters.

Deterministic by seed: every clip is drawn from a `numpy.random.Generator` seeded by the caller.
Prompts read "a {colour} {shape} {motion}" and are parsed case-insensitively.
"""

import re
from dataclasses import dataclass

import numpy as np

COLOURS = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
}
SHAPES = ("circle", "square", "triangle")
CLUSTERS = ("translation", "scale", "fade")
MOTIONS = {
    "moving left": "translation",
    "moving right": "translation",
    "moving up": "translation",
    "moving down": "translation",
    "growing": "scale",
    "shrinking": "scale",
    "fading in": "fade",
    "fading out": "fade",
}
CLUSTER_MOTIONS = {c: [m for m, k in MOTIONS.items() if k == c] for c in CLUSTERS}

SIZE = 32
FRAMES = 9
FPS = 8
SUPERSAMPLE = 4
MIN_BRIGHTNESS = 0.25  # fades run between this and full brightness

_PROMPT_RE = re.compile(
    r"^\s*(?:an?\s+)?(" + "|".join(COLOURS) + r")\s+(" + "|".join(SHAPES) + r")\s+("
    + "|".join(m.replace(" ", r"\s+") for m in MOTIONS) + r")\s*\.?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ClipSpec:
    colour: str
    shape: str
    motion: str

    @property
    def cluster(self) -> str:
        return MOTIONS[self.motion]

    @property
    def cluster_index(self) -> int:
        return CLUSTERS.index(self.cluster)

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.shape} {self.motion}"


def parse_prompt(prompt: str) -> ClipSpec | None:
    """'A Red CIRCLE moving   left' -> ClipSpec('red', 'circle', 'moving left'); None if not ours."""
    m = _PROMPT_RE.match(prompt or "")
    if not m:
        return None
    colour, shape, motion = (g.lower() for g in m.groups())
    return ClipSpec(colour, shape, " ".join(motion.split()))


def all_specs(cluster: str | None = None) -> list[ClipSpec]:
    motions = [m for m in MOTIONS if cluster is None or MOTIONS[m] == cluster]
    return [ClipSpec(c, s, m) for m in motions for c in COLOURS for s in SHAPES]


def sample_spec(rng: np.random.Generator, cluster: str | None = None) -> ClipSpec:
    motions = CLUSTER_MOTIONS[cluster] if cluster else list(MOTIONS)
    return ClipSpec(
        list(COLOURS)[rng.integers(len(COLOURS))],
        SHAPES[rng.integers(len(SHAPES))],
        motions[rng.integers(len(motions))],
    )


def _coverage(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape with centre (cx, cy) and half-size r."""
    n = size * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(coords, coords)
    dx, dy = x - cx, y - cy
    if shape == "circle":
        inside = dx**2 + dy**2 <= r**2
    elif shape == "square":
        inside = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    else:  # upward triangle inscribed in the circle of radius r
        top, base = -r, r * 0.6
        half_width = (dy - top) / (base - top) * r * 0.95
        inside = (dy >= top) & (dy <= base) & (np.abs(dx) <= half_width)
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def _trajectory(spec: ClipSpec, rng: np.random.Generator, size: int, frames: int):
    """Per-frame (cx, cy, r, brightness)."""
    s = np.linspace(0.0, 1.0, frames)
    if spec.cluster == "translation":
        r = rng.uniform(4.5, 6.0)
        dist = rng.uniform(0.40, 0.50) * size
        margin = r + 1.0
        along0 = rng.uniform(margin, size - margin - dist)
        across = rng.uniform(margin, size - margin)
        sign = 1.0 if spec.motion in ("moving right", "moving down") else -1.0
        start = along0 if sign > 0 else size - along0
        along = start + sign * dist * s
        if spec.motion in ("moving left", "moving right"):
            cx, cy = along, np.full(frames, across)
        else:
            cx, cy = np.full(frames, across), along
        return cx, cy, np.full(frames, r), np.ones(frames)
    if spec.cluster == "scale":
        r_small, r_big = rng.uniform(3.0, 4.0), rng.uniform(10.0, 12.0)
        margin = r_big + 1.0
        cx = np.full(frames, rng.uniform(margin, size - margin))
        cy = np.full(frames, rng.uniform(margin, size - margin))
        r = r_small + (r_big - r_small) * (s if spec.motion == "growing" else 1 - s)
        return cx, cy, r, np.ones(frames)
    r = rng.uniform(6.0, 9.0)
    margin = r + 1.0
    cx = np.full(frames, rng.uniform(margin, size - margin))
    cy = np.full(frames, rng.uniform(margin, size - margin))
    ramp = s if spec.motion == "fading in" else 1 - s
    return cx, cy, np.full(frames, r), MIN_BRIGHTNESS + (1 - MIN_BRIGHTNESS) * ramp


def render_clip(spec: ClipSpec, rng: np.random.Generator, size: int = SIZE, frames: int = FRAMES) -> np.ndarray:
    """uint8 (frames, size, size, 3)."""
    cx, cy, r, bright = _trajectory(spec, rng, size, frames)
    colour = np.asarray(COLOURS[spec.colour], dtype=np.float64)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for f in range(frames):
        cov = _coverage(spec.shape, cx[f], cy[f], r[f], size)
        out[f] = np.round(cov[..., None] * colour * bright[f] * 255.0).astype(np.uint8)
    return out


def make_clips(n: int, seed: int, cluster: str | None = None, size: int = SIZE, frames: int = FRAMES):
    """n clips and their specs, deterministic in (n, seed, cluster)."""
    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng, cluster) for _ in range(n)]
    clips = np.stack([render_clip(sp, rng, size, frames) for sp in specs])
    return clips, specs


def to_model_space(clips: np.ndarray):
    """uint8 (N, F, H, W, 3) -> float tensor (N, 3, F, H, W) in [-1, 1]."""
    import torch

    x = torch.from_numpy(clips).float().div(127.5).sub(1.0)
    return x.permute(0, 4, 1, 2, 3).contiguous()
