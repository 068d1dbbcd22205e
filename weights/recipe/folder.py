"""The model-folder layout and its one writer: model.json plus a folder per component.

The paris-mini build and the tests' random-weight tiny models both write through here, so the
layout, the weight format and the manifest are made one way.
"""

import json
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import AutoencoderKLHunyuanVideo
from safetensors.torch import save_file

from pipeline.manifest import Manifest, expert_key

# Component folders (the manifest's `path`s).
T5, T5_TOKENIZER, CLIP, CLIP_TOKENIZER, DINOV2, VAE, ROUTER = (
    "text_encoder", "tokenizer", "clip_text", "clip_tokenizer", "image_encoder", "vae", "router")


def save_module(module: torch.nn.Module, config, folder: Path) -> None:
    """One of our modules: config.json (the config dataclass's fields) + model.safetensors (fp32,
    contiguous); the loader converts to the manifest's dtype."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    state = {k: v.detach().float().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))


def save_vae(vae: AutoencoderKLHunyuanVideo, out: Path) -> None:
    vae.save_pretrained(out / VAE, safe_serialization=True)


def components(max_length: int, expert_names: list[str]) -> dict:
    """model.json's `components` for this layout (one expert per name)."""
    return {
        "t5": {"class": "T5EncoderModel", "path": T5, "tokenizer": T5_TOKENIZER, "max_length": max_length},
        "clip": {"class": "CLIPTextModel", "path": CLIP, "tokenizer": CLIP_TOKENIZER, "max_length": max_length},
        "dinov2": {"class": "Dinov2Model", "path": DINOV2},
        "vae": {"class": "AutoencoderKLHunyuanVideo", "path": VAE},
        "router": {"class": "DiTRouter", "path": ROUTER},
        "experts": [{"class": "MMDiT", "path": expert_key(i), "name": name} for i, name in enumerate(expert_names)],
    }


def write_manifest(out: Path, manifest: dict) -> None:
    """model.json, refused unless the loader would accept it."""
    Manifest.model_validate(manifest)
    (out / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
