"""What a model needs at one clip size, measured on the meta device from configs and safetensors
headers alone: weight bytes per component, the peak activation bytes and FLOPs of one expert
forward, the VAE decode peak, and the encoders' peaks.

Each peak is the most bytes of tensors alive at once while the real module runs on meta tensors
(see peak_memory.py), its inputs and outputs included, its weights not. Batch sizes are the
engine's worst case: an expert forward holds every row routed to it (2 CFG rows per
text-to-video request, 3 per image-to-video request), T5 and CLIP encode every new prompt and
negative prompt of `max_batch` requests at once, and first frames are encoded together.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..encoders import configure_vae_decoding
from ..manifest import Manifest, expert_key, parse_size, read_manifest
from ..models.expert import MMDiT
from ..request import GenerationRequest, resolve
from ..sampling import latent_frames
from .meta import meta_module, module_bytes, weight_bytes
from .peak_memory import PeakMemory

aten = torch.ops.aten
ATTENTION_OPS = {aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_efficient_attention,
                 aten._scaled_dot_product_cudnn_attention}
DINOV2_CROP = 224  # DINOv2's image processor crops to 224 x 224 unless its preprocessor config says otherwise
EMBEDDING_DTYPE_BYTES = 4  # the engine keeps T5 and CLIP embeddings in fp32


@dataclass(frozen=True)
class ClipShape:
    """One clip size in pixels, latents and tokens."""

    width: int
    height: int
    frames: int
    latent_frames: int
    latent_height: int
    latent_width: int
    image_tokens: int
    text_tokens: int

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}, {self.frames} frames"


@dataclass(frozen=True)
class Affine:
    """y = fixed + per_item * n, fitted through two measurements (the tests check a third)."""

    fixed: int
    per_item: int

    def at(self, n: int) -> int:
        return self.fixed + self.per_item * n

    @classmethod
    def through(cls, n1: int, y1: int, n2: int, y2: int) -> "Affine":
        per_item = (y2 - y1) // (n2 - n1)
        return cls(y1 - per_item * n1, per_item)


@dataclass(frozen=True)
class ForwardFlops:
    matmul: int  # Linear layers (addmm, mm, bmm) and convolutions
    attention: int  # the fused attention kernels (QK^T and PV)

    @property
    def total(self) -> int:
        return self.matmul + self.attention


@dataclass(frozen=True)
class ExpertCost:
    """One expert forward at the footprint's clip shape, per row (CFG branch) where it scales."""

    activation: Affine  # peak bytes by rows
    flops_per_row: ForwardFlops
    block_bytes: tuple[int, ...]  # double-stream blocks, then single-stream blocks, in forward order
    block_flops_per_row: tuple[int, ...]  # same order
    stem_bytes: int  # everything outside the blocks: embedders and the final layer
    image_row_bytes: int = 0  # one row's image tokens (N x hidden) in the expert's dtype: a step-cache tensor
    modulation_bytes: int = 0  # block 0's image modulation, copied to the device for the step-cache signal


@dataclass(frozen=True)
class Footprint:
    model: str
    shape: ClipShape
    max_batch: int
    rows_per_request: int  # 3 when the model takes a first frame (image-to-video), else 2
    weights: dict[str, int]  # component registry name -> device bytes
    weight_sources: dict[str, str]  # "safetensors" or "config"
    expert: ExpertCost
    router_peak: int  # one router forward over max_batch requests (0: the model has no router)
    decode_peak: int  # one video
    decode_flops: int  # one video
    t5_peak: int  # 2 * max_batch texts
    clip_peak: int  # 2 * max_batch texts
    image_encode_peak: int  # VAE encode of max_batch first frames, then DINOv2 (its peak if larger)
    embedding_bytes: int  # one cached text: T5 hidden states + CLIP pooled vector
    expert_names: tuple[str, ...]  # registry names, expert_0 first


def clip_shape(manifest: Manifest, vae: nn.Module, expert: MMDiT, size: str, frames: int) -> ClipShape:
    """Latent and token counts of a clip, from the VAE's compression and the expert's patch."""
    width, height = parse_size(size)
    spatial, patch = vae.config.spatial_compression_ratio, expert.config.patch_size
    t, h, w = latent_frames(frames, vae.config.temporal_compression_ratio), height // spatial, width // spatial
    return ClipShape(width, height, frames, t, h, w, t * (h // patch) * (w // patch),
                     manifest.components.t5.max_length or 512)


def peak_bytes(run, device: str = "meta") -> int:
    """Runs `run()` in inference mode with tensors created on `device` (the meta device: shapes
    only); the most bytes alive at once."""
    with torch.inference_mode(), PeakMemory() as memory, torch.device(device):
        run()
    return memory.peak


def peak_and_flops(run) -> tuple[int, FlopCounterMode]:
    """`peak_bytes` and the FLOPs of the same run (counting is slower: torch decomposes every
    op it has no formula for)."""
    flops = FlopCounterMode(display=False)
    with flops:
        peak = peak_bytes(run)
    return peak, flops


def split_flops(counts: dict) -> ForwardFlops:
    attention = sum(n for op, n in counts.items() if op in ATTENTION_OPS)
    return ForwardFlops(sum(counts.values()) - attention, attention)


def expert_forward(expert: MMDiT, shape: ClipShape, rows: int) -> torch.Tensor:
    """One forward with the engine's inputs (in the expert's dtype) and fp32 output."""
    c, n, dtype = expert.config, shape.image_tokens, expert.dtype
    cond = torch.empty(rows, n, c.in_channels + c.patch_size**2, dtype=dtype) if c.cond_embed else None
    return expert(torch.empty(rows, n, c.in_channels, dtype=dtype), torch.empty(rows, n, 3, dtype=torch.long),
                  torch.empty(rows, shape.text_tokens, c.context_in_dim, dtype=dtype),
                  torch.zeros(rows, shape.text_tokens, 3), torch.empty(rows, dtype=dtype),
                  torch.empty(rows, c.vec_in_dim, dtype=dtype), cond).float()


def measure_expert(expert: MMDiT, shape: ClipShape) -> ExpertCost:
    peak_1, flops = peak_and_flops(lambda: expert_forward(expert, shape, 1))
    peak_2 = peak_bytes(lambda: expert_forward(expert, shape, 2))
    per_module = flops.get_flop_counts()
    root = type(expert).__name__
    blocks = [*expert.double_blocks, *expert.single_blocks]
    names = [f"{root}.double_blocks.{i}" for i in range(len(expert.double_blocks))]
    names += [f"{root}.single_blocks.{i}" for i in range(len(expert.single_blocks))]
    block_bytes = tuple(module_bytes(b) for b in blocks)
    return ExpertCost(
        activation=Affine.through(1, peak_1, 2, peak_2),
        flops_per_row=split_flops(per_module["Global"]),
        block_bytes=block_bytes,
        block_flops_per_row=tuple(sum(per_module.get(n, {}).values()) for n in names),
        stem_bytes=module_bytes(expert) - sum(block_bytes),
        image_row_bytes=shape.image_tokens * expert.config.hidden_size * expert.dtype.itemsize,
        modulation_bytes=module_bytes(expert.double_blocks[0].img_mod),
    )


def router_forward(router: nn.Module, shape: ClipShape, batch: int) -> None:
    dtype = next(router.parameters()).dtype
    c = router.config
    router(torch.empty(batch, c.in_channels, shape.latent_frames, shape.latent_height, shape.latent_width, dtype=dtype),
           torch.empty(batch, dtype=dtype), torch.empty(batch, c.vec_in_dim, dtype=dtype),
           torch.empty(batch, c.image_feature_dim, dtype=dtype), torch.ones(batch, dtype=torch.bool))


def vae_decode(vae: nn.Module, shape: ClipShape, videos: int) -> None:
    """What encoders.vae_decode runs on the device: the decode and its uint8 conversion."""
    latents = torch.empty(videos, vae.config.latent_channels, shape.latent_frames, shape.latent_height, shape.latent_width)
    video = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample
    ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def vae_encode(vae: nn.Module, shape: ClipShape, frames: int) -> None:
    pixels = torch.empty(frames, 3, 1, shape.height, shape.width, dtype=vae.dtype)
    vae.encode(pixels).latent_dist.mode().float()


def t5_encode(t5: nn.Module, shape: ClipShape, texts: int) -> None:
    """Padded to max_length with a padding mask, as encoders.encode_t5 calls it; the mask is
    passed in the (texts, 1, L, L) form transformers builds from it (building it needs values)."""
    L = shape.text_tokens
    ids = torch.zeros(texts, L, dtype=torch.long)
    t5(input_ids=ids, attention_mask=torch.ones(texts, 1, L, L, dtype=torch.bool)).last_hidden_state.float()


def clip_encode(clip: nn.Module, tokens: int, texts: int) -> None:
    clip(input_ids=torch.zeros(texts, tokens, dtype=torch.long)).pooler_output.float()


def dinov2_encode(dinov2: nn.Module, crop: int, images: int) -> None:
    dinov2(pixel_values=torch.empty(images, 3, crop, crop, dtype=dinov2.dtype)).pooler_output.float()


def dinov2_crop(folder: Path) -> int:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return DINOV2_CROP
    crop = json.loads(path.read_text()).get("crop_size", DINOV2_CROP)
    return crop["height"] if isinstance(crop, dict) else crop


def measure_footprint(folder: str | Path, size: str | None = None, frames: int | None = None,
                      max_batch: int = 8) -> Footprint:
    """Everything the planner needs for clips of `size` ("WxH") and `frames` (default: the
    largest the manifest allows), served `max_batch` requests at a time."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    limits, components = manifest.limits, manifest.components
    size = size or max(limits.sizes, key=lambda s: parse_size(s)[0] * parse_size(s)[1])
    frames = frames or limits.max_frames
    resolve(manifest, GenerationRequest(prompt="plan", num_frames=frames, size=size))  # the model's limits, checked in one place
    named = components.named()
    measured = {name: weight_bytes(comp, folder / comp.path) for name, comp in named.items()}
    modules = {name: meta_module(named[name], folder / named[name].path) for name in ("vae", "router", "t5", "clip")
               if name in named}
    expert = meta_module(components.experts[0], folder / components.experts[0].path)  # the engine runs every expert with expert 0's config
    vae = modules["vae"]
    configure_vae_decoding(vae)
    shape = clip_shape(manifest, vae, expert, size, frames)
    texts = 2 * max_batch  # each request's prompt and negative prompt
    clip_tokens = components.clip.max_length or 77
    image_peaks = [peak_bytes(lambda: vae_encode(vae, shape, max_batch))]
    if components.dinov2 is not None:
        dinov2 = meta_module(components.dinov2, folder / components.dinov2.path)
        crop = dinov2_crop(folder / components.dinov2.path)
        image_peaks.append(peak_bytes(lambda: dinov2_encode(dinov2, crop, max_batch)))
    decode_peak, decode_flops = peak_and_flops(lambda: vae_decode(vae, shape, 1))
    t5_hidden = modules["t5"].config.d_model
    clip_dim = modules["clip"].config.hidden_size
    return Footprint(
        model=manifest.name, shape=shape, max_batch=max_batch,
        rows_per_request=3 if expert.config.cond_embed and components.dinov2 is not None else 2,
        weights={n: b for n, (b, _) in measured.items()}, weight_sources={n: s for n, (_, s) in measured.items()},
        expert=measure_expert(expert, shape),
        router_peak=peak_bytes(lambda: router_forward(modules["router"], shape, max_batch)) if "router" in modules else 0,
        decode_peak=decode_peak, decode_flops=decode_flops.get_total_flops(),
        t5_peak=peak_bytes(lambda: t5_encode(modules["t5"], shape, texts)),
        clip_peak=peak_bytes(lambda: clip_encode(modules["clip"], clip_tokens, texts)),
        image_encode_peak=max(image_peaks),
        embedding_bytes=(shape.text_tokens * t5_hidden + clip_dim) * EMBEDDING_DTYPE_BYTES,
        expert_names=tuple(expert_key(i) for i in range(len(components.experts))),
    )
