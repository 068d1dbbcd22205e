"""Tiny random-weight model folders of the real component classes (no download anywhere).

Tokenizers are paris-mini's; encoders, VAE, experts and router are the recipe's builders at a
smaller size, seeded random. Written with the recipe's folder writer, so a tiny folder has the
layout and manifest paris-mini has. Experts are the largest components, as in a real model, so
a budget that holds one expert makes the experts take turns.
"""

from pathlib import Path

import torch

from pipeline.manifest import expert_key
from pipeline.models.expert import MMDiT, MMDiTConfig
from pipeline.models.router import DiTRouter, RouterConfig
from weights.recipe.encoders import Encoders
from weights.recipe.folder import ROUTER, components, save_module, save_vae, write_manifest
from weights.recipe.vae import build_vae

NUM_EXPERTS = 3
WIDTH = 32  # every encoder's features, and so the experts' and router's inputs


def tiny_expert_config(**overrides) -> MMDiTConfig:
    base = dict(in_channels=64, vec_in_dim=32, context_in_dim=32, hidden_size=32, mlp_ratio=2.0, num_heads=2,
                depth=1, depth_single_blocks=1, axes_dim=[4, 6, 6], theta=10000, qkv_bias=True, cond_embed=True)
    return MMDiTConfig(**{**base, **overrides})


def build_tiny_model(folder: str | Path, steps: int = 4) -> Path:
    """A complete model folder: 32x32 pixels, 9 frames (17 at most), 4x VAE, 3 experts."""
    folder = Path(folder)
    encoders = Encoders(seed=0, max_length=8, width=WIDTH, depth=1)
    encoders.save(folder)
    save_vae(build_vae(seed=0, block_out_channels=(8, 16, 16)), folder)

    torch.manual_seed(0)
    router = RouterConfig(num_experts=NUM_EXPERTS, in_channels=16, patch_size=2, hidden_size=32, depth=1, num_heads=2,
                          mlp_ratio=2.0, vec_in_dim=WIDTH, image_feature_dim=WIDTH)
    save_module(DiTRouter(router), router, folder / ROUTER)
    expert = tiny_expert_config(context_in_dim=WIDTH, vec_in_dim=WIDTH)
    for i in range(NUM_EXPERTS):
        save_module(MMDiT(expert), expert, folder / expert_key(i))

    write_manifest(folder, {
        "name": "tiny-random",
        "description": "random weights, for tests only",
        "components": components(encoders.max_length, [f"expert-{i}" for i in range(NUM_EXPERTS)]),
        "sampling": {"num_inference_steps": steps, "guidance_scale": 5.0, "image_guidance_scale": 2.0, "fps": 8,
                     "num_frames": 9, "size": "32x32", "top_k": 1},
        "limits": {"sizes": ["32x32", "64x32"], "max_frames": 17, "size_multiple": 8, "max_steps": 50},
    })
    return folder
