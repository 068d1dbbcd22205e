"""Evaluate a paris-mini style model: generate, write MP4, read it back, detect, score.

    python -m weights.recipe.evaluate --model weights/paris-mini --json eval.json
    paris eval --model weights/paris-mini

Sections (thresholds from issue 3):
  t2v     colour accuracy >= 0.85, motion accuracy >= 0.75 (24 prompts x 2 seeds, top-1 routing)
  i2v     frame-0 PSNR >= 25 dB vs the given frame, colour kept, motion accuracy >= 0.70
  router  top-1 cluster accuracy at t <= 0.5 >= 0.90 (held-out clips), per noise level
  special each expert forced (fixed-expert policy) on each cluster's prompts: the in-cluster
          expert has the best motion accuracy on its own cluster
"""

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .data import CLUSTERS, COLOURS, MOTIONS, SHAPES, ClipSpec, render_clip
from .detector import detect, read_mp4

THRESHOLDS = {"t2v_colour": 0.85, "t2v_motion": 0.75, "i2v_psnr": 25.0, "i2v_colour": 0.85, "i2v_motion": 0.70,
              "router_t_le_0.5": 0.90}
NOISE_LEVELS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def prompt_set() -> list[ClipSpec]:
    """24 prompts: every motion 3 times, every colour 4 times, every shape 8 times."""
    colours, motions = list(COLOURS), list(MOTIONS)
    return [ClipSpec(colours[(3 * m + j) % 6], SHAPES[(m + j) % 3], motions[m]) for m in range(8) for j in range(3)]


def first_frame(spec: ClipSpec, seed: int) -> np.ndarray:
    return render_clip(spec, np.random.default_rng(10_000 + seed))[0]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


@dataclass(frozen=True)
class Clip:
    spec: ClipSpec
    seed: int
    image: np.ndarray | None = None  # first frame (image-to-video)
    routing: dict = field(default_factory=dict)  # GenerationRequest routing fields


class Runner:
    """Generates clips (batched through one engine), writes each as MP4, reads it back and
    scores what it shows."""

    def __init__(self, model, workdir: Path, steps: int | None = None, guidance: float | None = None,
                 speed: str | None = None, max_batch: int = 16):
        self.model, self.workdir, self.steps, self.guidance, self.speed = model, workdir, steps, guidance, speed
        self.max_batch = max_batch
        self.batches: list[tuple[int, float]] = []  # (clips, wall seconds) per call
        self.count = 0

    def __call__(self, clips: list[Clip]) -> list[dict]:
        from pipeline.generate import generate_batch
        from pipeline.request import GenerationRequest

        requests = [GenerationRequest(prompt=c.spec.prompt, seed=c.seed, num_inference_steps=self.steps,
                                      guidance_scale=self.guidance, speed=self.speed,
                                      image=Image.fromarray(c.image) if c.image is not None else None, **c.routing)
                    for c in clips]
        start = time.perf_counter()
        results = generate_batch(self.model, requests, self.max_batch)
        self.batches.append((len(clips), time.perf_counter() - start))
        return [self._score(c, r) for c, r in zip(clips, results)]

    def _score(self, clip: Clip, result) -> dict:
        from pipeline.video import write_mp4

        spec, seed, image = clip.spec, clip.seed, clip.image
        self.count += 1
        path = write_mp4(result.frames, result.fps, self.workdir / f"clip_{self.count:04d}.mp4")
        frames, _ = read_mp4(path)
        det = detect(frames)
        row = {"prompt": spec.prompt, "seed": seed, "cluster": spec.cluster, "colour": det.colour, "motion": det.motion,
               "colour_ok": det.colour == spec.colour, "motion_ok": det.motion == spec.motion, "cues": det.cues,
               "experts": sorted({e for step in result.trace.steps for e in step.experts})}
        if image is not None:
            row["psnr_frame0"] = psnr(frames[0], image)
        row["_frames"] = frames  # as read back from the MP4
        row["_raw"] = result.frames  # as generated
        row["compute"] = result.compute.to_dict()
        return row


def _mean(rows, key) -> float:
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")


def router_table(model, per_cluster: int = 64, seed: int = 4242) -> dict:
    """Router accuracy on held-out clips at each noise level, with and without the first frame."""
    from .encoders import Encoders
    from .latents import build_cache
    from .router import router_accuracy

    cache = build_cache(model.get("vae"), Encoders.from_model(model), per_cluster, seed, progress=False)
    router = model.get("router")
    text_only = router_accuracy(router, cache, NOISE_LEVELS, with_image=False)
    with_image = router_accuracy(router, cache, NOISE_LEVELS, with_image=True)
    return {"levels": list(NOISE_LEVELS), "t2v": [text_only[t] for t in NOISE_LEVELS],
            "i2v": [with_image[t] for t in NOISE_LEVELS],
            "t_le_0.5": float(np.mean([min(text_only[t], with_image[t]) for t in NOISE_LEVELS if t <= 0.5])),
            "clips": len(cache)}


def evaluate(model_dir: Path, seeds=(0, 1), steps: int | None = None, guidance: float | None = None,
             quick: bool = False, progress: bool = True, samples_png: Path | None = None,
             speed: str | None = None, keep_frames: bool = False) -> dict:
    """`keep_frames`: rows keep the generated frames under "_raw" (not JSON-serialisable)."""
    from pipeline.loader import load_model

    torch.manual_seed(0)
    model = load_model(model_dir)
    specs = prompt_set()
    if quick:
        specs, seeds = specs[::4], seeds[:1]
    report: dict = {"model": str(model_dir), "seeds": list(seeds), "prompts": [s.prompt for s in specs],
                    "speed": speed or str(model.manifest.sampling.speed)}
    with tempfile.TemporaryDirectory() as tmp:
        run = Runner(model, Path(tmp), steps, guidance, speed)
        jobs = [(s, seed) for s in specs for seed in seeds]
        sections = tqdm(total=2 + model.num_experts, desc="eval sections", disable=not progress)
        t2v = run([Clip(s, seed) for s, seed in jobs])
        sections.update()
        i2v = run([Clip(s, seed, first_frame(s, seed)) for s, seed in jobs])
        sections.update()
        spec_rows = {}
        for e in range(model.num_experts):
            spec_rows[e] = run([Clip(s, seeds[0], routing={"routing": "fixed", "expert": e}) for s in specs])
            sections.update()
        sections.close()
    if samples_png is not None:
        write_samples(samples_png, t2v, i2v)
    for rows in [t2v, i2v, *spec_rows.values()]:
        for r in rows:
            r.pop("_frames", None)
            if not keep_frames:
                r.pop("_raw", None)

    report["t2v"] = {"colour_acc": _mean(t2v, "colour_ok"), "motion_acc": _mean(t2v, "motion_ok"), "n": len(t2v),
                     "per_cluster_motion": {c: _mean([r for r in t2v if r["cluster"] == c], "motion_ok") for c in CLUSTERS},
                     "routed_to_own_expert": _mean([{"ok": r["experts"] == [CLUSTERS.index(r["cluster"])]} for r in t2v], "ok"),
                     "seconds_per_video": run.batches[0][1] / run.batches[0][0]}
    report["i2v"] = {"psnr_frame0_mean": _mean(i2v, "psnr_frame0"), "psnr_frame0_min": float(min(r["psnr_frame0"] for r in i2v)),
                     "colour_acc": _mean(i2v, "colour_ok"), "motion_acc": _mean(i2v, "motion_ok"), "n": len(i2v)}
    report["generation_seconds"] = sum(seconds for _, seconds in run.batches)
    report["router"] = router_table(model, per_cluster=16 if quick else 64)
    matrix = [[_mean([r for r in spec_rows[e] if r["cluster"] == c], "motion_ok") for c in CLUSTERS]
              for e in range(model.num_experts)]
    report["specialization"] = {"experts": list(CLUSTERS), "clusters": list(CLUSTERS), "motion_acc": matrix,
                                "in_cluster_best": all(matrix[c][c] > max(matrix[e][c] for e in range(len(matrix)) if e != c)
                                                       for c in range(len(CLUSTERS)))}
    report["checks"] = {
        "t2v_colour": report["t2v"]["colour_acc"] >= THRESHOLDS["t2v_colour"],
        "t2v_motion": report["t2v"]["motion_acc"] >= THRESHOLDS["t2v_motion"],
        "i2v_psnr": report["i2v"]["psnr_frame0_mean"] >= THRESHOLDS["i2v_psnr"],
        "i2v_colour": report["i2v"]["colour_acc"] >= THRESHOLDS["i2v_colour"],
        "i2v_motion": report["i2v"]["motion_acc"] >= THRESHOLDS["i2v_motion"],
        "router_t_le_0.5": report["router"]["t_le_0.5"] >= THRESHOLDS["router_t_le_0.5"],
        "specialization": report["specialization"]["in_cluster_best"],
    }
    report["passed"] = all(report["checks"].values())
    report["rows"] = {"t2v": t2v, "i2v": i2v, "specialization": {str(e): rows for e, rows in spec_rows.items()}}
    return report


def write_samples(path: Path, t2v: list[dict], i2v: list[dict], per_row: int = 9, scale: int = 2) -> None:
    """A spritesheet: one row per clip (frames left to right), a few t2v clips then a few i2v clips."""
    picks = [r for r in t2v if r["seed"] == 0][::3][:8] + [r for r in i2v if r["seed"] == 0][1::6][:4]
    if not picks:
        return
    f, h, w, _ = picks[0]["_frames"].shape
    sheet = np.zeros((len(picks) * (h + 2), per_row * (w + 2), 3), dtype=np.uint8)
    for i, r in enumerate(picks):
        idx = np.linspace(0, f - 1, per_row).round().astype(int)
        for j, k in enumerate(idx):
            sheet[i * (h + 2) : i * (h + 2) + h, j * (w + 2) : j * (w + 2) + w] = r["_frames"][k]
    img = Image.fromarray(sheet).resize((sheet.shape[1] * scale, sheet.shape[0] * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)
    (path.with_suffix(".txt")).write_text(
        "\n".join(("i2v: " if "psnr_frame0" in r else "t2v: ") + f"{r['prompt']} (seed {r['seed']})" for r in picks) + "\n")


def format_table(report: dict) -> str:
    t, i, r, s = report["t2v"], report["i2v"], report["router"], report["specialization"]
    ok = report["checks"]
    mark = lambda b: "pass" if b else "FAIL"  # noqa: E731
    lines = [
        "| metric | measured | threshold | |",
        "|---|---|---|---|",
        f"| t2v colour accuracy ({t['n']} videos) | {t['colour_acc']:.3f} | >= 0.85 | {mark(ok['t2v_colour'])} |",
        f"| t2v motion accuracy | {t['motion_acc']:.3f} | >= 0.75 | {mark(ok['t2v_motion'])} |",
        f"| i2v frame-0 PSNR, mean (min) dB ({i['n']} videos) | {i['psnr_frame0_mean']:.2f} ({i['psnr_frame0_min']:.2f}) | >= 25 | {mark(ok['i2v_psnr'])} |",
        f"| i2v colour kept | {i['colour_acc']:.3f} | >= 0.85 | {mark(ok['i2v_colour'])} |",
        f"| i2v motion accuracy | {i['motion_acc']:.3f} | >= 0.70 | {mark(ok['i2v_motion'])} |",
        f"| router top-1 accuracy, t <= 0.5 | {r['t_le_0.5']:.3f} | >= 0.90 | {mark(ok['router_t_le_0.5'])} |",
        f"| specialization: in-cluster expert best | {s['in_cluster_best']} | true | {mark(ok['specialization'])} |",
        "",
        "Router top-1 accuracy by noise level (t = 1 is pure noise; " + f"{r['clips']} held-out clips):",
        "",
        "| t | " + " | ".join(f"{v:g}" for v in r["levels"]) + " |",
        "|---|" + "---|" * len(r["levels"]),
        "| text only | " + " | ".join(f"{v:.3f}" for v in r["t2v"]) + " |",
        "| text + first frame | " + " | ".join(f"{v:.3f}" for v in r["i2v"]) + " |",
        "",
        "Specialization probe (motion accuracy, expert forced with the fixed-expert policy):",
        "",
        "| expert \\ cluster prompts | " + " | ".join(s["clusters"]) + " |",
        "|---|" + "---|" * len(s["clusters"]),
    ]
    for e, row in enumerate(s["motion_acc"]):
        lines.append(f"| expert {e} ({s['experts'][e]}) | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    lines += ["", "t2v motion accuracy per cluster: " + ", ".join(f"{k} {v:.3f}" for k, v in t["per_cluster_motion"].items()),
              f"seconds per t2v video (this run, {report['speed']} preset, batched, wall time / videos): "
              f"{t['seconds_per_video']:.2f}"]
    return "\n".join(lines)


def run(args) -> int:
    from pipeline.loader import quiet_library_logging

    quiet_library_logging()
    torch.set_num_threads(args.threads)
    report = evaluate(args.model, steps=args.steps, guidance=args.guidance, quick=args.quick, samples_png=args.samples,
                      speed=args.speed)
    args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(format_table(report))
    print(f"\nwrote {args.json}; all thresholds met: {report['passed']}")
    return 0 if report["passed"] else 1


def main(argv=None) -> int:
    from .cli import add_eval_arguments

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
