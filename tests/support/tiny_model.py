"""Tiny random-weight model folders of the real component classes (no download anywhere).

Tokenizers are paris-mini's; encoders, VAE, experts and router are the recipe's builders at a
smaller size, seeded random. Written with the recipe's folder writer, so a tiny folder has the
layout and manifest paris-mini has. Experts are the largest components, as in a real model, so
a budget that holds one expert makes the experts take turns.

`build_tiny_open_sora` lays a folder out as the `weights/open-sora-v2` template does, with the
release's file names (`Open_Sora_v2.safetensors`, `hunyuan_vae.safetensors`) and dtypes.
"""

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipeline.manifest import expert_key
from pipeline.models.expert import MMDiT, MMDiTConfig
from pipeline.models.router import DiTRouter, RouterConfig
from weights.recipe.encoders import Encoders
from weights.recipe.folder import (CLIP, CLIP_TOKENIZER, ROUTER, T5, T5_TOKENIZER, components, save_module, save_vae,
                                   write_manifest)
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


OPEN_SORA_TEMPLATE = Path(__file__).resolve().parents[2] / "weights" / "open-sora-v2"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def save_as(module: torch.nn.Module, folder: Path, filename: str, dtype: torch.dtype, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.detach().to(dtype).contiguous().clone() for k, v in module.state_dict().items()}, str(folder / filename))


def build_tiny_open_sora(folder: str | Path, steps: int = 3) -> Path:
    """The template's components (classes, folders, dtypes), its weight files named as Open-Sora
    ships them, at a tiny size: 32x32 pixels, 9 frames, one expert, no router."""
    folder = Path(folder)
    manifest = json.loads((OPEN_SORA_TEMPLATE / "model.json").read_text())
    named = manifest["components"]
    encoders = Encoders(seed=0, max_length=8, width=WIDTH, depth=1)
    for name, module, path in (("t5", encoders.t5, T5), ("clip", encoders.clip, CLIP)):
        assert named[name]["path"] == path
        module.to(DTYPES[named[name]["dtype"]]).save_pretrained(folder / path)
        named[name]["max_length"] = encoders.max_length
    encoders.t5_tokenizer.save_pretrained(folder / named["t5"]["tokenizer"])
    encoders.clip_tokenizer.save_pretrained(folder / named["clip"]["tokenizer"])
    assert (named["t5"]["tokenizer"], named["clip"]["tokenizer"]) == (T5_TOKENIZER, CLIP_TOKENIZER)

    vae = build_vae(seed=0, block_out_channels=(8, 16, 16))
    save_as(vae, folder / named["vae"]["path"], "hunyuan_vae.safetensors", DTYPES[named["vae"]["dtype"]], dict(vae.config))
    torch.manual_seed(0)
    (expert_entry,) = named["experts"]
    expert = tiny_expert_config(context_in_dim=WIDTH, vec_in_dim=WIDTH)
    save_as(MMDiT(expert), folder / expert_entry["path"], "Open_Sora_v2.safetensors", DTYPES[expert_entry["dtype"]],
            asdict(expert))
    write_manifest(folder, {
        **manifest, "name": "tiny-open-sora",
        "sampling": {**manifest["sampling"], "num_inference_steps": steps, "num_frames": 9, "size": "32x32"},
        "limits": {**manifest["limits"], "sizes": ["32x32"], "max_frames": 17, "size_multiple": 8},
    })
    return folder
