"""Text, image and video encoders, all from the libraries made for them.

T5 and CLIP text (transformers), DINOv2 first-frame feature (transformers), HunyuanVideo VAE
(diffusers). This module only adapts their inputs and outputs to the engine's tensors.
"""

import numpy as np
import torch
from PIL import Image


@torch.no_grad()
def encode_t5(model, tokenizer, prompts: list[str], max_length: int) -> torch.Tensor:
    """Last hidden state, always padded to max_length (the expert expects a fixed text length)."""
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    device = next(model.parameters()).device
    out = model(input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
    return out.last_hidden_state.float()


@torch.no_grad()
def encode_clip(model, tokenizer, prompts: list[str], max_length: int) -> torch.Tensor:
    """Pooled output (the end-of-text token's state)."""
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    device = next(model.parameters()).device
    return model(input_ids=tokens.input_ids.to(device)).pooler_output.float()


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize to cover (width, height) keeping the aspect ratio, then center-crop."""
    image = image.convert("RGB")
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.BICUBIC)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


@torch.no_grad()
def encode_dinov2(model, processor, images: list[Image.Image]) -> torch.Tensor:
    """Pooled DINOv2 feature (layer-normed CLS token) of each first frame."""
    device = next(model.parameters()).device
    pixels = processor(images=images, return_tensors="pt").pixel_values.to(device, next(model.parameters()).dtype)
    return model(pixel_values=pixels).pooler_output.float()


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


@torch.no_grad()
def vae_encode_frame(vae, images: list[Image.Image]) -> torch.Tensor:
    """First frames -> scaled latents (B, C, 1, h, w); the distribution's mean, so it is deterministic."""
    param = next(vae.parameters())
    pixels = torch.stack([image_to_tensor(im) for im in images])[:, :, None].to(param.device, param.dtype)
    return vae.encode(pixels).latent_dist.mode().float() * vae.config.scaling_factor


@torch.no_grad()
def vae_decode(vae, latents: torch.Tensor) -> np.ndarray:
    """Scaled latents (B, C, T, h, w) -> uint8 frames (B, F, H, W, 3)."""
    param = next(vae.parameters())
    video = vae.decode((latents / vae.config.scaling_factor).to(param.device, param.dtype)).sample
    video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return video.permute(0, 2, 3, 4, 1).cpu().numpy()


def configure_vae_decoding(vae) -> None:
    """Decode short clips whole, as Open-Sora does (diffusers defaults to frame-wise tiles, which
    changes the output); tile spatially only above 256 px, where memory needs it; and one video
    of a batch at a time (slicing), so a batch peaks at one video's activations."""
    vae.use_framewise_decoding = False
    vae.use_framewise_encoding = False
    vae.enable_tiling()
    vae.enable_slicing()
