"""The router: a DiT-B style classifier over experts.

Reads the current noisy latent, the timestep, the pooled CLIP text vector and, optionally, a
DINOv2 first-frame feature (a learned null vector stands in when there is none), and returns
one logit per expert.
"""


from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import config_from_dict
from .expert import image_positions, pack
from .layers import MLPEmbedder, split_heads, timestep_embedding


@dataclass
class RouterConfig:
    num_experts: int = 3
    in_channels: int = 16
    patch_size: int = 2
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    vec_in_dim: int = 768
    image_feature_dim: int = 768

    @classmethod
    def from_dict(cls, d: dict) -> "RouterConfig":
        return config_from_dict(cls, d, ignore_unknown=False)


def sincos_positions(ids: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sin-cos embedding of (t, i, j) positions; dim split evenly over the three axes."""
    per_axis = dim // 3 // 2 * 2
    parts = []
    for axis in range(3):
        omega = 1.0 / 10000 ** (torch.arange(per_axis // 2, dtype=torch.float32, device=ids.device) / (per_axis // 2))
        arg = ids[..., axis].float()[..., None] * omega
        parts += [arg.sin(), arg.cos()]
    emb = torch.cat(parts, dim=-1)
    return F.pad(emb, (0, dim - emb.shape[-1]))


class RouterBlock(nn.Module):
    """A DiT block with adaLN-Zero conditioning."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, hidden))
        self.adaLN_modulation = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(F.silu(c))[:, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = (split_heads(p, self.num_heads) for p in self.qkv(h).chunk(3, dim=-1))
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape)
        x = x + gate1 * self.proj(attn)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class DiTRouter(nn.Module):
    def __init__(self, config: RouterConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.patch_embed = nn.Linear(config.in_channels * config.patch_size**2, hidden)
        self.time_in = MLPEmbedder(256, hidden)
        self.vector_in = MLPEmbedder(config.vec_in_dim, hidden)
        self.image_in = MLPEmbedder(config.image_feature_dim, hidden)
        self.null_image = nn.Parameter(torch.zeros(config.image_feature_dim))
        self.blocks = nn.ModuleList(RouterBlock(hidden, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm_out = nn.LayerNorm(hidden, eps=1e-6)
        self.head = nn.Linear(hidden, config.num_experts)

    def forward(self, latent, timesteps, y_vec, image_feature=None, has_image=None):
        """latent (B, C, T, H, W); timesteps (B,); y_vec (B, vec_in_dim);
        image_feature (B, image_feature_dim) with has_image (B,) bool marking the rows that have one."""
        b, _, t, h, w = latent.shape
        p = self.config.patch_size
        x = self.patch_embed(pack(latent, p))
        ids = image_positions(t, h, w, p).to(latent.device)
        x = x + sincos_positions(ids, x.shape[-1]).to(x.dtype)[None]
        image = self.null_image.expand(b, -1)
        if image_feature is not None:
            mask = torch.ones(b, dtype=torch.bool, device=latent.device) if has_image is None else has_image
            image = torch.where(mask[:, None], image_feature.to(image.dtype), image)
        c = self.time_in(timestep_embedding(timesteps, 256).to(x.dtype)) + self.vector_in(y_vec) + self.image_in(image)
        for block in self.blocks:
            x = block(x, c)
        return self.head(self.norm_out(x.mean(dim=1)))
