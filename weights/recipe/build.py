"""Build paris-mini from scratch: `python -m weights.recipe.build --out weights/paris-mini`.

Stages: frozen encoders + tokenizers -> VAE training -> latent cache -> three experts, each on
its own cluster -> router -> model.json. Deterministic for a given seed and thread count;
progress bars on stderr, one JSON line per logged loss in <out>/build.log.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch

from pipeline.manifest import Manifest

from .common import Timer, log_event, save_module, setup_logging
from .data import CLUSTERS, FPS, FRAMES, SIZE
from .encoders import CLIP_DIM, DINO_DIM, TEXT_DIM, Encoders
from .experts import expert_config, train_expert
from .latents import build_cache
from .router import router_accuracy, router_config, train_router
from .vae import train_vae

PROFILES = {
    # the shipped model (about 40 minutes on 2 cores)
    "full": dict(vae_steps=600, vae_batch=12, per_cluster=2000, expert_steps=1500, expert_batch=64,
                 router_steps=800, router_batch=64, expert_hidden=96),
    # the code path only, for tests
    "tiny": dict(vae_steps=3, vae_batch=2, per_cluster=8, expert_steps=3, expert_batch=4,
                 router_steps=3, router_batch=4, expert_hidden=32),
}

SAMPLING = dict(num_inference_steps=20, guidance_scale=4.0, image_guidance_scale=2.0, guidance_oscillation=False,
                fps=FPS, num_frames=FRAMES, size=f"{SIZE}x{SIZE}", top_k=1, negative_prompt="",
                prompt_template="{prompt}")


def manifest_dict(max_length: int, sampling: dict | None = None) -> dict:
    return {
        "name": "paris-mini",
        "format": "paris-ddm/1",
        "description": "A tiny Decentralized Diffusion Model trained from scratch on synthetic clips "
                       "(one coloured shape on black; 3 experts: translation, scale, fade). See weights/recipe.",
        "components": {
            "t5": {"class": "T5EncoderModel", "path": "text_encoder", "tokenizer": "tokenizer", "max_length": max_length},
            "clip": {"class": "CLIPTextModel", "path": "clip_text", "tokenizer": "clip_tokenizer",
                     "max_length": max_length},
            "dinov2": {"class": "Dinov2Model", "path": "image_encoder"},
            "vae": {"class": "AutoencoderKLHunyuanVideo", "path": "vae"},
            "router": {"class": "DiTRouter", "path": "router"},
            "experts": [{"class": "MMDiT", "path": f"expert_{i}", "name": name} for i, name in enumerate(CLUSTERS)],
        },
        "sampling": {**SAMPLING, **(sampling or {})},
        "limits": {"sizes": [f"{SIZE}x{SIZE}"], "max_frames": FRAMES, "temporal_compression": 4,
                   "size_multiple": 8, "max_steps": 100, "max_fps": 60, "max_prompt_chars": 200},
        "routing": {"renormalize": True},
    }


def build(out: Path, profile: str = "full", seed: int = 0, threads: int = 2, progress: bool = True,
          **overrides) -> dict:
    p = {**PROFILES[profile], **overrides}
    torch.set_num_threads(threads)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    setup_logging(out / "build.log")
    timer = Timer()
    log_event("build_start", profile=profile, seed=seed, threads=threads, **p)
    report = {"profile": profile, "seed": seed, "threads": threads, "params": p, "stages": {}}

    encoders = Encoders(seed)
    encoders.save(out)
    log_event("encoders_saved", seconds=timer())

    vae, stats = train_vae(p["vae_steps"], p["vae_batch"], seed + 10, progress=progress)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    report["stages"]["vae"] = {**stats, "seconds": timer()}

    cache = build_cache(vae, encoders, p["per_cluster"], seed + 20, progress=progress)
    report["stages"]["cache"] = {"clips": len(cache), "prompts": len(cache.prompts),
                                 "latent_std": float(cache.latents.std()), "seconds": timer()}
    log_event("cache_done", **report["stages"]["cache"])

    cfg = expert_config(TEXT_DIM, CLIP_DIM, hidden=p["expert_hidden"])
    for i, name in enumerate(CLUSTERS):
        expert, stats = train_expert(cache, i, cfg, p["expert_steps"], p["expert_batch"], seed + 30 + i,
                                     progress=progress, name=f"expert_{i}_{name}")
        save_module(expert, cfg, out / f"expert_{i}")
        report["stages"][f"expert_{i}"] = {**stats, "seconds": timer()}

    rcfg = router_config(CLIP_DIM, DINO_DIM, num_experts=len(CLUSTERS))
    router, stats = train_router(cache, rcfg, p["router_steps"], p["router_batch"], seed + 40, progress=progress)
    save_module(router, rcfg, out / "router")
    stats["train_cache_accuracy"] = {str(k): v for k, v in router_accuracy(router, cache).items()}
    report["stages"]["router"] = {**stats, "seconds": timer()}

    manifest = manifest_dict(encoders.max_length)
    Manifest.model_validate(manifest)
    (out / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    report["seconds"] = timer()
    (out / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log_event("build_done", seconds=report["seconds"])
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="weights/paris-mini")
    ap.add_argument("--profile", default="full", choices=sorted(PROFILES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-progress", action="store_true")
    for key, value in PROFILES["full"].items():
        ap.add_argument("--" + key.replace("_", "-"), type=type(value), default=None)
    args = ap.parse_args(argv)
    overrides = {k: getattr(args, k) for k in PROFILES["full"] if getattr(args, k) is not None}
    build(Path(args.out), args.profile, args.seed, args.threads, not args.no_progress, **overrides)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
