"""Speed presets on the shipped paris-mini, every figure measured in one run:

- expert FLOPs per video relative to `quality`: row-forwards x the stem (embedding, final layer)
  + block-forwards x FLOPs per block, from torch's FlopCounterMode on the expert at paris-mini's
  clip size (the planner's meta-device measurement, pipeline/planner/footprint.py); a row that
  computes runs every block, a row that reuses none (its cache signal, one linear on the
  conditioning vector, is under 0.2% of a row's FLOPs and left out);
- the wall-time ratio against `quality`: one batch of t2v videos per preset, the presets
  alternating over a dozen rounds, the fastest round of each compared (the machine is shared:
  a single pair of runs says little);
- quality: every `paris eval` threshold (weights/recipe/evaluate.py) at each preset, and the PSNR
  of each video against its `quality` twin (same section, prompt, seed, routing): the mean over
  videos (judged, as the issue states it), the pooled one (of the mean squared error over all
  videos, never above the mean) and the lowest;
- with --sweep, the speed/quality curve: the `fast` preset with other cache thresholds and reuse
  limits (its warm-up and guidance interval kept), each point evaluated like the presets.

    python -m tests.benchmarks.bench_speed_presets [--steps 50] [--presets balanced fast] [--quick]
        [--sweep 0.2:5,0.4:8] [--rounds 5] [--json docs/speed-presets-50.json]

Prints one JSON object; tests/benchmarks/plot_speed_presets.py draws one or more as an SVG.
Targets at 50 steps: `fast` >= 2x fewer expert FLOPs with every eval threshold held and a mean
PSNR >= 25 dB against quality; `balanced` >= 1.4x with a mean PSNR >= 30 dB (and every eval
threshold held: the issue does not ask it of balanced, the judgement here does).
"""

import argparse
import json
import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

TARGETS = {"balanced": {"flops_ratio": 1.4, "psnr_db": 30.0}, "fast": {"flops_ratio": 2.0, "psnr_db": 25.0}}
TARGET_STEPS = 50
PSNR_CAP_DB = 100.0  # identical videos


def block_costs(model_dir: Path) -> dict:
    """FLOPs per row of the expert's parts at the model's largest clip (the default, for paris-mini)."""
    from pipeline.planner.footprint import measure_footprint

    cost = measure_footprint(model_dir).expert
    blocks = cost.block_flops_per_row
    return {"stem": cost.flops_per_row.total - sum(blocks), "block_mean": sum(blocks) / len(blocks),
            "blocks": len(blocks), "row_total": cost.flops_per_row.total}


def expert_flops(compute: dict, costs: dict) -> float:
    """Exact: rows compute all blocks or none, so block-forwards come in whole rows."""
    return compute["row_forwards"] * costs["stem"] + compute["block_forwards"] * costs["block_mean"]


def clip_key(section: str, row: dict) -> tuple:
    return section, row["prompt"], row["seed"]


def sections(report: dict):
    """(section, row) for every generated video of an evaluation report."""
    for name in ("t2v", "i2v"):
        for row in report["rows"][name]:
            yield name, row
    for expert, rows in report["rows"]["specialization"].items():
        for row in rows:
            yield f"expert_{expert}_fixed", row


def reference(report: dict, costs: dict) -> dict:
    """Per video of a quality run: its frames and its expert FLOPs."""
    return {clip_key(section, row): (row["_raw"], expert_flops(row["compute"], costs)) for section, row in sections(report)}


def against_quality(report: dict, costs: dict, twins: dict) -> dict:
    """Expert FLOPs of the quality twins over this run's (same videos), and the PSNR of each
    video against its twin: per-video mean (identical videos at the cap), pooled over the
    squared errors of all videos, and the lowest."""
    errors, quality_flops, flops = [], 0.0, 0.0
    for section, row in sections(report):
        frames, twin_flops = twins[clip_key(section, row)]
        errors.append(float(np.mean((row["_raw"].astype(np.float64) - frames.astype(np.float64)) ** 2)))
        quality_flops += twin_flops
        flops += expert_flops(row["compute"], costs)
    per_video = [min(PSNR_CAP_DB, 10 * np.log10(255.0**2 / e)) if e > 0 else PSNR_CAP_DB for e in errors]
    pooled = np.mean(errors)
    return {"flops_ratio": round(quality_flops / flops, 3),
            "psnr_vs_quality_db": {
                "pooled": round(float(10 * np.log10(255.0**2 / pooled)) if pooled > 0 else PSNR_CAP_DB, 2),
                "mean": round(float(np.mean(per_video)), 2), "min": round(float(min(per_video)), 2),
                "identical": sum(e == 0 for e in errors), "videos": len(errors)}}


def summarise(report: dict, costs: dict) -> dict:
    computes = [row["compute"] for _, row in sections(report)]
    return {
        "videos": len(computes),
        "compute": {k: sum(c[k] for c in computes) for k in computes[0]},
        "expert_gflops_per_video": round(sum(expert_flops(c, costs) for c in computes) / len(computes) / 1e9, 4),
        "generation_seconds": round(report["generation_seconds"], 2),
        "eval": {"passed": report["passed"], "checks": report["checks"],
                 "t2v_colour": report["t2v"]["colour_acc"], "t2v_motion": report["t2v"]["motion_acc"],
                 "i2v_psnr_frame0": round(report["i2v"]["psnr_frame0_mean"], 2),
                 "i2v_colour": report["i2v"]["colour_acc"], "i2v_motion": report["i2v"]["motion_acc"],
                 "router_t_le_0.5": report["router"]["t_le_0.5"],
                 "specialization": report["specialization"]["in_cluster_best"]},
    }


@contextmanager
def fast_with(threshold: float, max_reuse: int):
    """The `fast` preset with another cache threshold and reuse limit (a sweep point), restored after."""
    from pipeline.speed import PRESETS, Speed

    saved = PRESETS[Speed.FAST]
    PRESETS[Speed.FAST] = replace(saved, cache=replace(saved.cache, threshold=threshold, max_reuse=max_reuse))
    try:
        yield
    finally:
        PRESETS[Speed.FAST] = saved


def judge(preset: str, result: dict) -> dict | None:
    """The issue's target: the FLOP ratio, every eval threshold, and the mean PSNR against quality."""
    target = TARGETS.get(preset)
    if target is None:
        return None
    return {**target, "met": bool(result["flops_ratio"] >= target["flops_ratio"] and result["eval"]["passed"]
                                  and result["psnr_vs_quality_db"]["mean"] >= target["psnr_db"])}


def wall_times(model_dir: Path, steps: int, presets: list[str], rounds: int) -> dict:
    """Wall time of one batch (every second t2v prompt of the evaluation, one seed, batched) at
    each preset, the presets alternating within each round so that the machine's load falls on
    all alike; one warm-up round is not counted. The ratio is quality's time over the preset's,
    of the fastest rounds (the rounds least disturbed by other processes: on the shared machine
    the same batch took from 1 to 50 s), and the median of the per-round ratios beside it."""
    from pipeline.generate import generate_batch
    from pipeline.loader import load_model
    from pipeline.request import GenerationRequest
    from weights.recipe.evaluate import prompt_set

    model = load_model(model_dir)
    specs = prompt_set()[::2]
    seconds = {p: [] for p in presets}
    for round_ in range(rounds + 1):
        for preset in presets:
            requests = [GenerationRequest(s.prompt, seed=0, num_inference_steps=steps, speed=preset) for s in specs]
            start = time.perf_counter()
            generate_batch(model, requests)
            if round_ > 0:
                seconds[preset].append(time.perf_counter() - start)
    out = {"videos_per_batch": len(specs), "rounds": rounds, "seconds": {p: [round(x, 3) for x in v] for p, v in seconds.items()}}
    for preset in presets[1:]:
        paired = [q / x for q, x in zip(seconds["quality"], seconds[preset])]
        out[preset] = {"fastest_ratio": round(min(seconds["quality"]) / min(seconds[preset]), 3),
                       "median_ratio": round(float(np.median(paired)), 3)}
    return out


def parse_sweep(text: str) -> list[tuple[float, int]]:
    """"0.1:3,0.2:5" -> [(0.1, 3), (0.2, 5)]: cache threshold and reuse limit per point."""
    points = []
    for item in filter(None, text.split(",")):
        threshold, max_reuse = item.split(":")
        points.append((float(threshold), int(max_reuse)))
    return points


def run(model_dir: Path, steps: int, presets: list[str], quick: bool, sweep: list[tuple[float, int]],
        rounds: int) -> dict:
    from weights.recipe.evaluate import evaluate

    costs = block_costs(model_dir)
    presets = ["quality", *(p for p in presets if p != "quality")]
    out = {"model": model_dir.name, "steps": steps, "eval": "quick" if quick else "full",
           "threads": torch.get_num_threads(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
           "flops_per_row": costs, "presets": {}}
    started = time.perf_counter()
    for preset in presets:
        report = evaluate(model_dir, steps=steps, quick=quick, progress=False, speed=preset, keep_frames=True)
        result = summarise(report, costs)
        if preset == "quality":
            twins = reference(report, costs)
        else:
            result.update(against_quality(report, costs, twins))
            if steps == TARGET_STEPS:
                result["target"] = judge(preset, result)
        out["presets"][preset] = result
    if len(presets) > 1 and rounds > 0:
        out["wall_time"] = wall_times(model_dir, steps, presets, rounds)
        for preset in presets[1:]:
            out["presets"][preset]["wall_time_ratio"] = out["wall_time"][preset]["fastest_ratio"]
    curve = []
    for threshold, max_reuse in sweep:
        with fast_with(threshold, max_reuse):
            report = evaluate(model_dir, steps=steps, quick=quick, progress=False, speed="fast", keep_frames=True)
        curve.append({"threshold": threshold, "max_reuse": max_reuse, **against_quality(report, costs, twins),
                      "eval_passed": report["passed"], "checks": report["checks"]})
    if curve:
        out["sweep"] = {"preset": "fast", "parameters": "cache threshold, max reuse", "points": curve}
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main(argv=None) -> int:
    from weights import DEFAULT_MODEL

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--steps", type=int, default=TARGET_STEPS)
    ap.add_argument("--presets", nargs="*", default=["balanced", "fast"], choices=["quality", "balanced", "fast"],
                    help="presets to measure against quality (quality always runs: it is the reference)")
    ap.add_argument("--quick", action="store_true", help="quick evaluation (a quarter of the prompts, one seed)")
    ap.add_argument("--sweep", default="", help="THRESHOLD:MAX_REUSE,... points of the fast preset's cache for the curve")
    ap.add_argument("--rounds", type=int, default=12, help="alternating rounds for the wall-time ratio (0: none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from pipeline.loader import quiet_library_logging

    quiet_library_logging()
    result = run(args.model, args.steps, args.presets, args.quick, parse_sweep(args.sweep), args.rounds)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
