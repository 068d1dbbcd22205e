"""Speed presets on the shipped paris-mini, every figure measured in one run:

- expert FLOPs per video relative to `quality`: row-forwards x (stem + first block) + the other
  block-forwards x their FLOPs per block, FLOPs from torch's FlopCounterMode on the expert at
  paris-mini's clip size (the planner's meta-device measurement, pipeline/planner/footprint.py);
  every row runs the stem (embedding, final layer) and the first block, computing rows the rest;
- the wall-time ratio of the evaluation's generations (batched, this machine, noisy when shared);
- quality: every `paris eval` threshold (weights/recipe/evaluate.py) at each preset, and the PSNR
  of each video against its `quality` twin (same section, prompt, seed, routing);
- the speed/quality curve at the first step count: the cache threshold swept with the `fast`
  preset's other parts kept (quick evaluation: a quarter of the prompts, one seed).

    python -m tests.benchmarks.bench_speed_presets [--steps 50 20] [--quick] [--sweep 0.05,0.1,0.2]
        [--json docs/speed-presets.json] [--plot docs/speed-presets.png]

Prints one JSON object. Targets at 50 steps: `fast` >= 2x fewer expert FLOPs with every eval
threshold held and PSNR >= 25 dB against quality; `balanced` >= 1.4x with PSNR >= 30 dB. The
PSNR judged is the pooled one (of the mean squared error over all videos), which is never above
the mean of the per-video PSNRs.
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
    return {"stem": cost.flops_per_row.total - sum(blocks), "first_block": blocks[0],
            "other_block_mean": sum(blocks[1:]) / (len(blocks) - 1), "blocks": len(blocks),
            "row_total": cost.flops_per_row.total}


def expert_flops(compute: dict, costs: dict) -> float:
    rows, blocks = compute["row_forwards"], compute["block_forwards"]
    return rows * (costs["stem"] + costs["first_block"]) + (blocks - rows) * costs["other_block_mean"]


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
def fast_with_threshold(threshold: float):
    """The `fast` preset with another cache threshold (for the sweep), restored after."""
    from pipeline.speed import PRESETS, Speed

    saved = PRESETS[Speed.FAST]
    PRESETS[Speed.FAST] = replace(saved, cache=replace(saved.cache, threshold=threshold))
    try:
        yield
    finally:
        PRESETS[Speed.FAST] = saved


def judge(preset: str, result: dict) -> dict | None:
    target = TARGETS.get(preset)
    if target is None:
        return None
    return {**target, "met": bool(result["flops_ratio"] >= target["flops_ratio"] and result["eval"]["passed"]
                                  and result["psnr_vs_quality_db"]["pooled"] >= target["psnr_db"])}


def run(model_dir: Path, steps_list: list[int], quick: bool, sweep: list[float]) -> dict:
    from weights.recipe.evaluate import evaluate

    costs = block_costs(model_dir)
    out = {"model": model_dir.name, "eval": "quick" if quick else "full", "threads": torch.get_num_threads(),
           "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "flops_per_row": costs, "steps": {}}
    started = time.perf_counter()
    twins = {}
    for steps in steps_list:
        per_preset = {}
        for preset in ("quality", "balanced", "fast"):
            report = evaluate(model_dir, steps=steps, quick=quick, progress=False, speed=preset, keep_frames=True)
            result = summarise(report, costs)
            if preset == "quality":
                twins[steps] = reference(report, costs)
            else:
                result.update(against_quality(report, costs, twins[steps]))
                result["wall_time_ratio"] = round(per_preset["quality"]["generation_seconds"] / result["generation_seconds"], 3)
                if steps == TARGET_STEPS:
                    result["target"] = judge(preset, result)
            per_preset[preset] = result
        out["steps"][str(steps)] = per_preset
    if sweep:  # quick evaluations: their videos are among the quality run's
        steps, curve = steps_list[0], []
        for threshold in sweep:
            with fast_with_threshold(threshold):
                report = evaluate(model_dir, steps=steps, quick=True, progress=False, speed="fast", keep_frames=True)
            curve.append({"threshold": threshold, **against_quality(report, costs, twins[steps]),
                          "eval_passed_quick": report["passed"], "checks": report["checks"]})
        out["sweep"] = {"steps": steps, "preset": "fast", "parameter": "cache threshold", "points": curve}
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def plot(result: dict, path: Path) -> None:
    """Expert FLOPs saved (x) against PSNR vs quality (y): the sweep's curve, the presets, the
    targets. Drawn with PIL (matplotlib is not a dependency)."""
    from PIL import Image, ImageDraw

    points = [(p["flops_ratio"], p["psnr_vs_quality_db"]["pooled"]) for p in result.get("sweep", {}).get("points", [])]
    presets = [(f"{name} ({steps} steps)", r["flops_ratio"], r["psnr_vs_quality_db"]["pooled"])
               for steps, by in result["steps"].items() for name, r in by.items() if name != "quality"]
    xs = [x for x, _ in points] + [x for _, x, _ in presets] + [1.0, 2.2]
    ys = [y for _, y in points] + [y for _, _, y in presets] + [20.0, 50.0]
    x0, x1, y0, y1 = 1.0, max(xs) * 1.05, min(ys) - 2, min(max(ys), PSNR_CAP_DB) + 2
    w, h, m = 720, 440, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)

    def at(x, y):
        return m + (x - x0) / (x1 - x0) * (w - 2 * m), h - m - (min(y, y1) - y0) / (y1 - y0) * (h - 2 * m)

    d.rectangle([m, m, w - m, h - m], outline="black")
    for name, t in TARGETS.items():  # target corners: at least this many x fewer FLOPs, at least this PSNR
        tx, ty = at(t["flops_ratio"], t["psnr_db"])
        d.line([tx, m, tx, h - m], fill=(210, 210, 210))
        d.line([m, ty, w - m, ty], fill=(210, 210, 210))
        d.text((tx + 3, ty + 3), f"{name} target", fill=(140, 140, 140))
    if points:
        d.line([at(x, y) for x, y in points], fill=(60, 110, 200), width=2)
        for (x, y), p in zip(points, result["sweep"]["points"]):
            px, py = at(x, y)
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=(60, 110, 200))
            d.text((px + 4, py - 12), f"{p['threshold']:g}", fill=(60, 110, 200))
    for label, x, y in presets:
        px, py = at(x, y)
        d.rectangle([px - 4, py - 4, px + 4, py + 4], fill=(200, 80, 40))
        d.text((px + 6, py + 2), label, fill=(200, 80, 40))
    for v in np.linspace(x0, x1, 5):
        d.text((at(v, y0)[0] - 10, h - m + 6), f"{v:.2f}x", fill="black")
    for v in np.linspace(y0, y1, 5):
        d.text((8, at(x0, v)[1] - 6), f"{v:.0f} dB", fill="black")
    d.text((m, 10), "paris-mini: expert FLOPs saved vs quality (x) against PSNR to the quality video (pooled, y)",
           fill="black")
    d.text((m, 26), "blue: fast preset, cache threshold swept (labels); orange: presets", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main(argv=None) -> int:
    from weights import DEFAULT_MODEL

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--steps", type=int, nargs="+", default=[TARGET_STEPS, 20])
    ap.add_argument("--quick", action="store_true", help="quick evaluation (a quarter of the prompts, one seed)")
    ap.add_argument("--sweep", default="", help="comma-separated cache thresholds for the curve (fast preset)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--plot", type=Path, help="write the plot (PNG) here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from pipeline.loader import quiet_library_logging

    quiet_library_logging()
    result = run(args.model, args.steps, args.quick, [float(x) for x in args.sweep.split(",") if x])
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    if args.plot:
        plot(result, args.plot)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
