"""Tiny model folders built from configs of the real classes, with seeded random weights.

Used by tests and benchmarks (no download anywhere) and by the paris-mini recipe, which starts
from the same component layout and trains it.
"""

import json
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import AutoencoderKLHunyuanVideo
from safetensors.torch import save_file
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import (BitImageProcessor, CLIPTextConfig, CLIPTextModel, Dinov2Config, Dinov2Model,
                          PreTrainedTokenizerFast, T5Config, T5EncoderModel)

from .models.expert import MMDiT, MMDiTConfig
from .models.router import DiTRouter, RouterConfig

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"


def word_tokenizer(words: list[str], add_bos: bool) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over `words`: <pad>=0, <unk>=1, <s>=2, </s>=3.
    T5-style adds only </s>; CLIP-style (add_bos) wraps in <s> ... </s>."""
    vocab = {PAD: 0, UNK: 1, BOS: 2, EOS: 3}
    for word in sorted({w.lower() for w in words}):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    single = f"{BOS} $A {EOS}" if add_bos else f"$A {EOS}"
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[(BOS, 2), (EOS, 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS)


def save_module(module: torch.nn.Module, config, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(asdict(config), indent=2))
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "model.safetensors"))


def tiny_expert_config(**overrides) -> MMDiTConfig:
    base = dict(in_channels=64, vec_in_dim=32, context_in_dim=32, hidden_size=32, mlp_ratio=2.0, num_heads=2,
                depth=1, depth_single_blocks=1, axes_dim=[4, 6, 6], theta=10000, qkv_bias=True, cond_embed=True)
    return MMDiTConfig(**{**base, **overrides})


def tiny_router_config(num_experts: int = 3, **overrides) -> RouterConfig:
    base = dict(num_experts=num_experts, in_channels=16, patch_size=2, hidden_size=32, depth=1, num_heads=2,
                mlp_ratio=2.0, vec_in_dim=32, image_feature_dim=32)
    return RouterConfig(**{**base, **overrides})


def tiny_vae() -> AutoencoderKLHunyuanVideo:
    return AutoencoderKLHunyuanVideo(
        block_out_channels=(8, 16, 16), down_block_types=("HunyuanVideoDownBlock3D",) * 3,
        up_block_types=("HunyuanVideoUpBlock3D",) * 3, layers_per_block=1, norm_num_groups=4,
        spatial_compression_ratio=4, temporal_compression_ratio=4, mid_block_add_attention=False)


def build_tiny_model(folder: str | Path, num_experts: int = 3, seed: int = 0, words: list[str] | None = None,
                     steps: int = 4, size: str = "32x32", num_frames: int = 9) -> Path:
    """Write a complete random-weight model folder: 32x32 pixels, 9 frames, 4x VAE, 3 experts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    words = words or "a red green blue circle square triangle moving left right up down growing shrinking fading in out".split()
    text_len, dim = 8, 32

    word_tokenizer(words, add_bos=False).save_pretrained(folder / "tokenizer")
    T5EncoderModel(T5Config(vocab_size=len(words) + 4, d_model=dim, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                            pad_token_id=0, eos_token_id=3, decoder_start_token_id=0)).save_pretrained(folder / "text_encoder")
    word_tokenizer(words, add_bos=True).save_pretrained(folder / "clip_tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(words) + 4, hidden_size=dim, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, max_position_embeddings=text_len, pad_token_id=0,
                                 bos_token_id=2, eos_token_id=3, projection_dim=dim)).save_pretrained(folder / "clip_text")
    Dinov2Model(Dinov2Config(hidden_size=dim, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                             image_size=32, patch_size=8)).save_pretrained(folder / "image_encoder")
    BitImageProcessor(do_resize=True, size={"shortest_edge": 32}, do_center_crop=True, crop_size={"height": 32, "width": 32},
                      do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                      do_convert_rgb=True).save_pretrained(folder / "image_encoder")
    tiny_vae().save_pretrained(folder / "vae")

    save_module(DiTRouter(tiny_router_config(num_experts)), tiny_router_config(num_experts), folder / "router")
    experts = []
    for i in range(num_experts):
        save_module(MMDiT(tiny_expert_config()), tiny_expert_config(), folder / f"expert_{i}")
        experts.append({"class": "MMDiT", "path": f"expert_{i}", "name": f"expert-{i}"})

    manifest = {
        "name": "tiny-random",
        "description": "random weights, for tests only",
        "components": {
            "t5": {"class": "T5EncoderModel", "path": "text_encoder", "tokenizer": "tokenizer", "max_length": text_len},
            "clip": {"class": "CLIPTextModel", "path": "clip_text", "tokenizer": "clip_tokenizer", "max_length": text_len},
            "dinov2": {"class": "Dinov2Model", "path": "image_encoder"},
            "vae": {"class": "AutoencoderKLHunyuanVideo", "path": "vae"},
            "router": {"class": "DiTRouter", "path": "router"},
            "experts": experts,
        },
        "sampling": {"num_inference_steps": steps, "guidance_scale": 5.0, "image_guidance_scale": 2.0, "fps": 8,
                     "num_frames": num_frames, "size": size, "top_k": 1},
        "limits": {"sizes": ["32x32", "64x32"], "max_frames": 17, "size_multiple": 8, "max_steps": 50},
    }
    (folder / "model.json").write_text(json.dumps(manifest, indent=2))
    return folder
