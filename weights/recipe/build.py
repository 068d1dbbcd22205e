"""Build paris-mini from scratch: `python -m weights.recipe.build --out weights/paris-mini`.

Stages: frozen encoders + tokenizers -> VAE training (lone frames, then clips) -> latent cache ->
three experts, each on its own cluster, and the router -> VAE decoder refinement -> model.json.
Deterministic for a given seed and thread count;
progress bars on stderr, one JSON line per logged loss in <out>/build.log.
"""

import argparse
import itertools
import json
import multiprocessing
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from pipeline.manifest import expert_key

from .common import Timer, log_event, setup_logging
from .data import CLUSTERS, COLOURS, FPS, FRAMES, MOTIONS, SHAPES, SIZE
from .encoders import CLIP_DIM, DINO_DIM, TEXT_DIM, Encoders
from .experts import expert_config, train_expert
from .folder import ROUTER, components, save_module, save_vae, write_manifest
from .latents import LatentCache, build_cache
from .profiles import PROFILES, WORKERS
from .router import router_accuracy, router_config, train_router
from .vae import build_vae, pretrain_on_frames, refine_decoder, train_vae


SAMPLING = dict(num_inference_steps=20, guidance_scale=2.5, image_guidance_scale=2.0, guidance_oscillation=False,
                fps=FPS, num_frames=FRAMES, size=f"{SIZE}x{SIZE}", top_k=1, negative_prompt="",
                prompt_template="{prompt}")
# Prompts in the model's vocabulary, one per motion (colours and shapes taken in turn): the
# manifest's `examples`, which the playground offers.
EXAMPLES = [f"a {c} {s} {m}" for c, s, m in zip(itertools.cycle(COLOURS), itertools.cycle(SHAPES), MOTIONS)]


def manifest_dict(max_length: int) -> dict:
    return {
        "name": "paris-mini",
        "format": "paris-ddm/1",
        "description": "A tiny Decentralized Diffusion Model trained from scratch on synthetic clips "
                       "(one coloured shape on black; 3 experts: translation, scale, fade). See weights/recipe.",
        "examples": EXAMPLES,
        "components": components(max_length, list(CLUSTERS)),
        "sampling": SAMPLING,
        "limits": {"sizes": [f"{SIZE}x{SIZE}"], "max_frames": FRAMES, "temporal_compression": 4,
                   "size_multiple": 8, "max_steps": 100, "max_fps": 60, "max_prompt_chars": 200},
        "routing": {"renormalize": True},
    }


def _train_job(kind: str, index: int, name: str, cache_path: str, out: str, p: dict, seed: int, progress: bool):
    """One expert or the router, in its own process: train, save, return (key, stats)."""
    torch.set_num_threads(1)
    setup_logging(Path(out) / f"build_{kind}_{index}.log" if progress is not None else None)
    timer = Timer()
    cache = LatentCache.load(Path(cache_path))
    if kind == "expert":
        cfg = expert_config(TEXT_DIM, CLIP_DIM, hidden=p["expert_hidden"])
        model, stats = train_expert(cache, index, cfg, p["expert_steps"], p["expert_batch"], seed + 30 + index,
                                    progress=progress, name=f"expert_{index}_{name}", position=index)
        save_module(model, cfg, Path(out) / expert_key(index))
        return expert_key(index), {**stats, "seconds": timer()}
    rcfg = router_config(CLIP_DIM, DINO_DIM, num_experts=len(CLUSTERS))
    model, stats = train_router(cache, rcfg, p["router_steps"], p["router_batch"], seed + 40, progress=progress,
                                position=index)
    save_module(model, rcfg, Path(out) / ROUTER)
    stats["train_cache_accuracy"] = {str(k): v for k, v in router_accuracy(model, cache).items()}
    return "router", {**stats, "seconds": timer()}


def _refine_decoder(vae, out: Path, p: dict, seed: int, progress: bool, timer: Timer) -> dict:
    torch.set_num_threads(1)  # one thread, like every other training job
    stats = refine_decoder(vae, p["decoder_steps"], p["decoder_batch"], seed + 50, progress=progress)
    save_vae(vae, out)
    return {**stats, "seconds": timer()}


def build(out: Path, profile: str = "full", seed: int = 0, threads: int = 1, progress: bool = True,
          workers: int | None = None, **overrides) -> dict:
    p = {**PROFILES[profile], **overrides}
    workers = WORKERS[profile] if workers is None else workers
    torch.set_num_threads(threads)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    setup_logging(out / "build.log")
    timer = Timer()
    log_event("build_start", profile=profile, seed=seed, threads=threads, workers=workers, **p)
    report = {"profile": profile, "seed": seed, "threads": threads, "workers": workers, "params": p, "stages": {}}

    encoders = Encoders(seed)
    encoders.save(out)
    log_event("encoders_saved", seconds=timer())

    vae = build_vae(seed + 10)
    stats = pretrain_on_frames(vae, p["vae_frame_steps"], p["vae_frame_batch"], seed + 10, progress=progress)
    report["stages"]["vae_frames"] = {**stats, "seconds": timer()}
    stats = train_vae(vae, p["vae_steps"], p["vae_batch"], seed + 10, progress=progress)
    save_vae(vae, out)
    report["stages"]["vae"] = {**stats, "seconds": timer()}

    cache = build_cache(vae, encoders, p["per_cluster"], seed + 20, progress=progress)
    report["stages"]["cache"] = {"clips": len(cache), "prompts": len(cache.prompts),
                                 "latent_std": float(cache.latents.std()), "seconds": timer()}
    log_event("cache_done", **report["stages"]["cache"])

    # Experts and router are independent (the DDM point): train them side by side, one thread
    # each, in fresh processes that read the latent cache from disk. Each job is seeded on its
    # own, so the result does not depend on scheduling.
    with tempfile.TemporaryDirectory(prefix="paris-mini-") as work:
        cache_path = Path(work) / "cache.safetensors"
        cache.save(cache_path)
        jobs = [("expert", i, name) for i, name in enumerate(CLUSTERS)] + [("router", len(CLUSTERS), "router")]
        args = [(kind, i, name, str(cache_path), str(out), p, seed, progress) for kind, i, name in jobs]
        if workers <= 1:
            results = [_train_job(*a) for a in args]
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                results = list(pool.map(_train_job, *zip(*args)))
    for key, stats in results:
        report["stages"][key] = stats
        log_event(f"{key}_saved", **{k: v for k, v in stats.items() if not isinstance(v, dict)})

    # Last: refine the VAE decoder on the frozen encoder's latents. Latents, experts and router
    # are unaffected; decoded clips (and i2v frame 0) get sharper.
    report["stages"]["vae_decoder"] = _refine_decoder(vae, out, p, seed, progress, timer)

    write_manifest(out, manifest_dict(encoders.max_length))
    report["seconds"] = timer()
    (out / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log_event("build_done", seconds=report["seconds"])
    return report


def run(args) -> int:
    overrides = {k: getattr(args, k) for k in PROFILES["full"] if getattr(args, k) is not None}
    build(args.out, args.profile, args.seed, args.threads, not args.no_progress, args.workers, **overrides)
    return 0


def main(argv=None) -> int:
    from .cli import add_build_arguments

    ap = argparse.ArgumentParser(description=__doc__)
    add_build_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
