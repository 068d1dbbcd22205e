"""The expert: a FLUX-style MM-DiT, checkpoint-compatible with Open-Sora v2's `MMDiTModel`
(same config field names, unfused state-dict keys, rotate-half RoPE over (t, h, w))."""

from dataclasses import dataclass, field

import torch
from torch import nn

from .config import config_from_dict
from .layers import DoubleStreamBlock, LastLayer, MLPEmbedder, SingleStreamBlock, rope_cos_sin, timestep_embedding


@dataclass
class MMDiTConfig:
    in_channels: int = 64
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: list[int] = field(default_factory=lambda: [16, 56, 56])
    theta: int = 10000
    qkv_bias: bool = True
    guidance_embed: bool = False
    cond_embed: bool = True
    patch_size: int = 2

    @classmethod
    def from_dict(cls, d: dict) -> "MMDiTConfig":
        """Takes Open-Sora's config dicts too: fields we do not use (from_pretrained,
        fused_qkv, grad_ckpt_settings, ...) are ignored."""
        cfg = config_from_dict(cls, d, ignore_unknown=True)
        if d.get("fused_qkv", False):
            raise ValueError("fused_qkv checkpoints are not supported; use the released unfused layout")
        if cfg.guidance_embed:
            raise ValueError("guidance_embed=True is not supported (Open-Sora v2 experts use False)")
        if cfg.hidden_size % cfg.num_heads or sum(cfg.axes_dim) != cfg.hidden_size // cfg.num_heads:
            raise ValueError("axes_dim must sum to hidden_size / num_heads")
        return cfg


def pack(latent: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """b c t (h p) (w q) -> b (t h w) (c p q)."""
    b, c, t, h, w = latent.shape
    x = latent.reshape(b, c, t, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 3, 5, 1, 4, 6).reshape(b, t * (h // patch) * (w // patch), c * patch * patch)


def unpack(tokens: torch.Tensor, t: int, h: int, w: int, patch: int = 2) -> torch.Tensor:
    """Inverse of `pack`; h and w are the latent (unpacked) height and width."""
    b, _, d = tokens.shape
    c = d // (patch * patch)
    x = tokens.reshape(b, t, h // patch, w // patch, c, patch, patch)
    return x.permute(0, 4, 1, 2, 5, 3, 6).reshape(b, c, t, h, w)


def image_positions(t: int, h: int, w: int, patch: int = 2) -> torch.Tensor:
    """Integer (t, i, j) ids of packed tokens, shape (t*h'*w', 3)."""
    grid = torch.meshgrid(torch.arange(t), torch.arange(h // patch), torch.arange(w // patch), indexing="ij")
    return torch.stack(grid, dim=-1).reshape(-1, 3)


@dataclass
class Hidden:
    """The expert's state between blocks, one row per batch row: image and text tokens, the
    conditioning vector (timestep + pooled text) and the RoPE tables."""

    img: torch.Tensor  # (B, N, hidden)
    txt: torch.Tensor  # (B, L, hidden)
    vec: torch.Tensor  # (B, hidden)
    cos: torch.Tensor  # (B, 1, L + N, head_dim)
    sin: torch.Tensor

    def rows(self, index: torch.Tensor) -> "Hidden":
        return Hidden(self.img[index], self.txt[index], self.vec[index], self.cos[index], self.sin[index])


class MMDiT(nn.Module):
    def __init__(self, config: MMDiTConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.img_in = nn.Linear(config.in_channels, hidden, bias=True)
        self.time_in = MLPEmbedder(256, hidden)
        self.vector_in = MLPEmbedder(config.vec_in_dim, hidden)
        if config.cond_embed:
            # mask (1 channel) + reference latent, packed: in_channels + patch^2 features.
            self.cond_in = nn.Linear(config.in_channels + config.patch_size**2, hidden, bias=True)
        self.txt_in = nn.Linear(config.context_in_dim, hidden)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(hidden, config.num_heads, config.mlp_ratio, config.qkv_bias) for _ in range(config.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(hidden, config.num_heads, config.mlp_ratio) for _ in range(config.depth_single_blocks)
        )
        self.final_layer = LastLayer(hidden, config.in_channels)
        if config.cond_embed:
            nn.init.zeros_(self.cond_in.weight)
            nn.init.zeros_(self.cond_in.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.img_in.weight.dtype

    @property
    def num_blocks(self) -> int:
        return len(self.double_blocks) + len(self.single_blocks)

    def forward(self, img, img_ids, txt, txt_ids, timesteps, y_vec, cond=None, blocks=None):
        """`blocks` replaces the pass over the blocks (default `run_blocks`: every block for every
        row); step caching passes its own (pipeline/step_cache.py). It runs inside this call, so
        hooks on the expert and its blocks (block streaming: pipeline/residency/streaming.py)
        see one forward either way."""
        h = self.embed(img, img_ids, txt, txt_ids, timesteps, y_vec, cond)
        return self.final((blocks or self.run_blocks)(h))

    # The forward in parts, so that step caching can run the blocks for some rows only.
    def embed(self, img, img_ids, txt, txt_ids, timesteps, y_vec, cond=None) -> Hidden:
        x = self.img_in(img)
        if self.config.cond_embed and cond is not None:
            x = x + self.cond_in(cond)
        vec = self.time_in(timestep_embedding(timesteps, 256).to(x.dtype)) + self.vector_in(y_vec)
        cos, sin = rope_cos_sin(torch.cat((txt_ids, img_ids), dim=1), self.config.axes_dim, self.config.theta)
        return Hidden(x, self.txt_in(txt), vec, cos, sin)

    def modulated_input(self, h: Hidden) -> torch.Tensor:
        """What the first block's image attention reads: the image tokens normalised and
        modulated by the conditioning vector (timestep + text). Step caching watches how it
        changes between steps (TeaCache's signal); it costs one linear on the vector per row.
        When the expert streams its blocks, block 0 sits in the host slab outside its own pass:
        its modulation weights (a sixth of the block) come to the vector's device for this linear,
        queued on the compute stream from the pinned slab without blocking the host (the plan's
        window counts them)."""
        block = self.double_blocks[0]
        weights = {name: t.to(h.vec.device, non_blocking=True) for name, t in block.img_mod.named_parameters()}
        mod, _ = torch.func.functional_call(block.img_mod, weights, (h.vec,))
        return mod.apply(block.img_norm1(h.img))

    def run_blocks(self, h: Hidden) -> Hidden:
        """Every block: the double-stream blocks, then the single-stream blocks over [txt; img].
        Updates `h` in place and returns it: each block's output replaces its input there, so no
        activation outlives the block that reads it (the caller holds `h` all along)."""
        for block in self.double_blocks:
            h.img, h.txt = block(h.img, h.txt, h.vec, h.cos, h.sin)
        x = torch.cat((h.txt, h.img), dim=1)
        h.img = None
        for block in self.single_blocks:
            x = block(x, h.vec, h.cos, h.sin)
        h.img, h.txt = x[:, h.txt.shape[1] :], x[:, : h.txt.shape[1]]
        return h

    def final(self, h: Hidden) -> torch.Tensor:
        return self.final_layer(h.img, h.vec)
