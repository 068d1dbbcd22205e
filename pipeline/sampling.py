"""Flow-matching sampling as pure functions: time shift, schedule, Euler step, guidance.

Conventions follow Open-Sora v2: t = 1 is pure noise, t = 0 is data, the model predicts the
velocity v = noise - data, and x_{t_prev} = x_t + (t_prev - t) * v.
"""

import math
from dataclasses import dataclass
from enum import Enum

import torch


def resolution_shift(tokens_per_frame: int, latent_frames: int) -> float:
    """alpha = lin(tokens_per_frame) * sqrt(T), lin mapping 256 -> 1 and 4096 -> 3."""
    slope = (3.0 - 1.0) / (4096 - 256)
    lin = 1.0 + slope * (tokens_per_frame - 256)
    return lin * math.sqrt(latent_frames)


def shift_time(t: torch.Tensor | float, alpha: float):
    """t' = alpha t / (1 + (alpha - 1) t)."""
    return alpha * t / (1 + (alpha - 1) * t)


def timesteps(num_steps: int, alpha: float) -> list[float]:
    """num_steps + 1 shifted times from 1 down to 0."""
    ts = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return [float(v) for v in shift_time(ts, alpha)]


def euler_step(x: torch.Tensor, v: torch.Tensor, t_curr: float, t_prev: float) -> torch.Tensor:
    return x + (t_prev - t_curr) * v


def text_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Text-to-video classifier-free guidance: u + g (c - u)."""
    return uncond + scale * (cond - uncond)


def image_text_cfg(cond, uncond_text, uncond_all, text_scale, image_scale):
    """Image-to-video three-branch guidance: u2 + g_img (u - u2) + g_txt (c - u).

    `image_scale` may be a tensor broadcasting over the latent (one value per latent frame).
    """
    return uncond_all + image_scale * (uncond_text - uncond_all) + text_scale * (cond - uncond_text)


class Branch(Enum):
    """The forwards that guidance combines (per request and expert)."""

    COND = "cond"  # the prompt; image-to-video: the first frame given
    UNCOND_TEXT = "uncond_text"  # the negative prompt; the first frame still given
    UNCOND_ALL = "uncond_all"  # the negative prompt and no first frame (image-to-video only)


@dataclass(frozen=True)
class Guidance:
    """One request's guidance at one step: the text scale, and the image scale per latent frame
    (a tensor broadcasting over the latent; None for text-to-video or where it is 1 everywhere)."""

    text_scale: float
    image_scale: torch.Tensor | None = None

    @property
    def branches(self) -> tuple[Branch, ...]:
        """The forwards it needs: the unconditional one is skipped at text scale 1."""
        if self.image_scale is not None:
            return (Branch.COND, Branch.UNCOND_TEXT, Branch.UNCOND_ALL)
        return (Branch.COND,) if self.text_scale == 1.0 else (Branch.COND, Branch.UNCOND_TEXT)

    def combine(self, out: dict[Branch, torch.Tensor]) -> torch.Tensor:
        """The guided velocity from one expert's output per branch."""
        if self.image_scale is not None:
            return image_text_cfg(out[Branch.COND], out[Branch.UNCOND_TEXT], out[Branch.UNCOND_ALL],
                                  self.text_scale, self.image_scale)
        if self.text_scale == 1.0:
            return out[Branch.COND]
        return text_cfg(out[Branch.COND], out[Branch.UNCOND_TEXT], self.text_scale)


def image_guidance_ramp(image_scale: float, step: int, num_steps: int, latent_frames: int) -> torch.Tensor:
    """Per-latent-frame image guidance at `step`: linspace(1, upper, T), where `upper` decays
    linearly from `image_scale` to 1 across the steps."""
    upper = torch.linspace(image_scale, 1.0, num_steps + 1, dtype=torch.float64)[step]
    return torch.linspace(1.0, float(upper), latent_frames, dtype=torch.float64)


def oscillation_off(step: int, oscillate: bool) -> bool:
    """With guidance oscillation, odd steps from step 10 on run the conditional branch alone."""
    return oscillate and step >= 10 and step % 2 == 1


def in_guidance_interval(t: float, interval: tuple[float, float]) -> bool:
    """Guidance in a limited interval (Kynkäänniemi et al. 2024): the unconditional branches run
    only while t_low <= t <= t_high."""
    low, high = interval
    return low <= t <= high


def latent_frames(num_frames: int, temporal_compression: int = 4) -> int:
    return (num_frames - 1) // temporal_compression + 1
