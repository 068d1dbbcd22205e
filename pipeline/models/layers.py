"""Building blocks of the FLUX-style MM-DiT, with Open-Sora v2's parameter names."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, time_factor: float = 1000.0):
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000), [cos, sin] order."""
    t = time_factor * t.float()
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_cos_sin(ids: torch.Tensor, axes_dim: list[int], theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE tables for positions `ids` (B, L, n_axes): per axis d_i/2 frequencies,
    axes concatenated, then repeated twice so dim d pairs with d + head_dim/2. -> (B, 1, L, head_dim)."""
    angles = []
    for axis, dim in enumerate(axes_dim):
        omega = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim)
        angles.append(ids[..., axis].double()[..., None] * omega)
    angle = torch.cat(angles, dim=-1)
    angle = torch.cat([angle, angle], dim=-1)
    return angle.cos().float()[:, None], angle.sin().float()[:, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return (x.float() * cos + rotate_half(x.float()) * sin).to(x.dtype)


def attention(q, k, v, cos, sin):
    """q, k, v: (B, H, L, D). RoPE on q and k, then SDPA; returns (B, L, H*D)."""
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out = F.scaled_dot_product_attention(q, k, v)
    b, h, l, d = out.shape
    return out.transpose(1, 2).reshape(b, l, h * d)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, l, _ = x.shape
    return x.view(b, l, num_heads, -1).transpose(1, 2)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=True)
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=True)

    def forward(self, x):
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        rrms = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
        return (x.float() * rrms).to(x.dtype) * self.scale


class QKNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q, k, v):
        return self.query_norm(q).to(v.dtype), self.key_norm(k).to(v.dtype)


@dataclass
class ModulationOut:
    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor

    def apply(self, x):
        return (1 + self.scale) * x + self.shift


class Modulation(nn.Module):
    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True)

    def forward(self, vec):
        out = self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)
        first = ModulationOut(*out[:3])
        return first, (ModulationOut(*out[3:]) if self.multiplier == 6 else None)


class StreamAttention(nn.Module):
    """Unfused q/k/v projections with QK RMS norm (Open-Sora v2 `fused_qkv=False`)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)

    def qkv(self, x):
        q, k, v = (split_heads(p(x), self.num_heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self.norm(q, k, v)
        return q, k, v


def mlp(hidden: int, mlp_hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, hidden))


class DoubleStreamBlock(nn.Module):
    """Separate weights for text and image tokens, joint attention over [txt; img]."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        mlp_hidden = int(hidden * mlp_ratio)
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_mod", Modulation(hidden, double=True))
            setattr(self, f"{stream}_norm1", nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_attn", StreamAttention(hidden, num_heads, qkv_bias))
            setattr(self, f"{stream}_norm2", nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_mlp", mlp(hidden, mlp_hidden))

    def forward(self, img, txt, vec, cos, sin):
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)
        img_q, img_k, img_v = self.img_attn.qkv(img_mod1.apply(self.img_norm1(img)))
        txt_q, txt_k, txt_v = self.txt_attn.qkv(txt_mod1.apply(self.txt_norm1(txt)))
        attn = attention(
            torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2), torch.cat((txt_v, img_v), dim=2), cos, sin
        )
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1] :]
        img = img + img_mod1.gate * self.img_attn.proj(img_attn)
        img = img + img_mod2.gate * self.img_mlp(img_mod2.apply(self.img_norm2(img)))
        txt = txt + txt_mod1.gate * self.txt_attn.proj(txt_attn)
        txt = txt + txt_mod2.gate * self.txt_mlp(txt_mod2.apply(self.txt_norm2(txt)))
        return img, txt


class SingleStreamBlock(nn.Module):
    """One stream over cat(txt, img); v and the MLP input share one projection (`v_mlp`)."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.hidden = hidden
        self.num_heads = num_heads
        self.mlp_hidden = int(hidden * mlp_ratio)
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_mlp = nn.Linear(hidden, hidden + self.mlp_hidden)
        self.linear2 = nn.Linear(hidden + self.mlp_hidden, hidden)
        self.norm = QKNorm(hidden // num_heads)
        self.pre_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden, double=False)

    def forward(self, x, vec, cos, sin):
        mod, _ = self.modulation(vec)
        x_mod = mod.apply(self.pre_norm(x))
        v, mlp_in = torch.split(self.v_mlp(x_mod), [self.hidden, self.mlp_hidden], dim=-1)
        q = split_heads(self.q_proj(x_mod), self.num_heads)
        k = split_heads(self.k_proj(x_mod), self.num_heads)
        v = split_heads(v, self.num_heads)
        q, k = self.norm(q, k, v)
        out = self.linear2(torch.cat((attention(q, k, v, cos, sin), self.mlp_act(mlp_in)), dim=2))
        return x + mod.gate * out


class LastLayer(nn.Module):
    def __init__(self, hidden: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden, bias=True))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :])
