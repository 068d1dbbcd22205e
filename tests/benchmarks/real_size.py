"""Predicted time per denoising step and per video of Paris 2.0 at real size, under the residency
plan `paris plan` makes for each device budget. ESTIMATES, not measurements: FLOPs and bytes
come from meta-device runs of the real modules on weights/paris-2's configs (no weights, no GPU);
seconds come from the constants printed with them.

Cases: 256x256 at 129 and 33 frames; 1 and 8 concurrent text-to-video requests (2 CFG rows
each); device budgets of 141, 80, 48 and 24 GiB (host memory assumed ample, HOST_MEMORY).

Model of a step. Each request's router picks one expert per step; which one is not known
without weights, so each pick is taken as uniform and independent, and a step's time is the
expectation over how the requests' rows fall on the experts. An expert with rows runs one
forward per `rows_per_forward` rows:
- resident: its FLOPs at PEAK_BF16 * MFU;
- streamed: its blocks (the stem first) are copied from pinned host memory at H2D_BYTES_PER_S on
  a side stream while earlier blocks compute; a copy waits for a free slot in the plan's window
  (window_blocks blocks on the device at once) and a block computes once its copy is in and the
  block before it is done, so each block costs max(compute, copy) after the first copy (not
  hidden: the prefetch across experts is not modelled).
Per video: all requests arrive together; T5 is copied in once when the plan keeps it on the host;
then 50 steps; then the videos decode at the same MFU.
Compute-only: the same work with every weight resident and no copy.

Run: python -m tests.benchmarks.real_size [--quick] [--mfu 0.45]
"""

import argparse
import json
import math
from pathlib import Path

from pipeline.planner.footprint import Footprint, measure_footprint
from pipeline.planner.plan import GiB, Placement, Plan, PlanRefused, Target, make_plan

MODEL = Path(__file__).resolve().parents[2] / "weights" / "paris-2"
PEAK_BF16 = 989e12  # H100 SXM, dense bf16 tensor-core FLOP/s (NVIDIA's datasheet)
# Model-FLOP utilisation of the expert forward. Open-Sora 2.0 reports 60 s for this model at
# 256x256, 129 frames, 50 steps on one H100 with 3 forward rows per step: 50 * 3 * 171.9 TFLOP
# (per row, counted here) = 25.8 PFLOP in 60 s is 430 TFLOP/s, 43% of peak with T5, the VAE and
# offload included; the readiness notes put eager bf16 with FA2 at ~0.8 s per 2-row step (43%),
# cuDNN attention or FA3 with compile higher. 45% is that eager figure, rounded up a little.
MFU = 0.45
H2D_BYTES_PER_S = 50e9  # pinned host-to-device over PCIe 5 x16, as measured in the field notes
STEPS = 50
ROWS_PER_REQUEST = 2  # text-to-video: conditional and unconditional rows
HOST_MEMORY = 512 * GiB  # ample: these cases are about the device budget
FRAMES = (129, 33)
REQUESTS = (1, 8)
BUDGETS_GIB = (141, 80, 48, 24)
TARGETS = {80: 1.05, 48: 1.10}  # issue 12: 129 frames, predicted time / compute-only time


def binomial(n: int, p: float) -> list[float]:
    return [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]


def streamed_pass_seconds(footprint: Footprint, rows: int, window: int, flop_rate: float) -> float:
    """One forward of a streamed expert over `rows` rows: copies and computes pipelined through
    a window of `window` blocks (the stem travels as the first block)."""
    e = footprint.expert
    stem_flops = e.flops_per_row.total - sum(e.block_flops_per_row)
    blocks = [(e.stem_bytes, stem_flops), *zip(e.block_bytes, e.block_flops_per_row)]
    copy_end, compute_end = [], []
    for i, (nbytes, flops) in enumerate(blocks):
        slot_free = compute_end[i - window] if i >= window else 0.0
        copy_end.append(max(copy_end[-1] if copy_end else 0.0, slot_free) + nbytes / H2D_BYTES_PER_S)
        compute_end.append(max(compute_end[-1] if compute_end else 0.0, copy_end[i]) + flops * rows / flop_rate)
    return compute_end[-1]


def expert_seconds(plan: Plan, name: str, rows: int, flop_rate: float) -> tuple[float, int]:
    """(seconds, bytes copied) for one expert's rows in one step."""
    if rows == 0:
        return 0.0, 0
    f = plan.footprint
    if plan.placement[name] is Placement.RESIDENT:
        return f.expert.flops_per_row.total * rows / flop_rate, 0
    passes, seconds = math.ceil(rows / plan.rows_per_forward), 0.0
    for i in range(passes):
        seconds += streamed_pass_seconds(f, min(plan.rows_per_forward, rows - i * plan.rows_per_forward),
                                         plan.target.window_blocks, flop_rate)
    return seconds, passes * f.weights[name]


def estimate(plan: Plan, requests: int, flop_rate: float) -> dict:
    f = plan.footprint
    experts = f.expert_names
    chance = binomial(requests, 1 / len(experts))  # requests routed to one given expert
    step_s = bytes_per_step = compute_s = 0.0
    for name in experts:
        for k, p in enumerate(chance):
            seconds, moved = expert_seconds(plan, name, ROWS_PER_REQUEST * k, flop_rate)
            step_s += p * seconds
            bytes_per_step += p * moved
            compute_s += p * f.expert.flops_per_row.total * ROWS_PER_REQUEST * k / flop_rate
    decode_s = f.decode_flops / flop_rate
    t5_s = f.weights["t5"] / H2D_BYTES_PER_S if plan.placement["t5"] is Placement.ON_DEMAND else 0.0
    batch_s = t5_s + STEPS * step_s + requests * decode_s  # decoding is compute-bound: together or apart, same time
    compute_batch_s = STEPS * compute_s + requests * decode_s
    return {
        "flops_per_step": round(f.expert.flops_per_row.total * ROWS_PER_REQUEST * requests),
        "bytes_moved_per_step": round(bytes_per_step),
        "step_s": round(step_s, 4), "compute_only_step_s": round(compute_s, 4),
        "step_ratio": round(step_s / compute_s, 4),
        "t5_copy_s": round(t5_s, 3), "decode_s_per_video": round(decode_s, 3),
        "all_videos_s": round(batch_s, 2), "per_video_s": round(batch_s / requests, 2),
        "compute_only_all_videos_s": round(compute_batch_s, 2),
        "video_ratio": round(batch_s / compute_batch_s, 4),
    }


def plan_summary(plan: Plan) -> dict:
    return {"resident": [n for n, p in plan.placement.items() if p is Placement.RESIDENT],
            "streamed": plan.streamed, "on_demand": [n for n, p in plan.placement.items() if p is Placement.ON_DEMAND],
            "window_blocks": plan.target.window_blocks if plan.streamed else 0,
            "rows_per_forward": plan.rows_per_forward, "decodes_at_once": plan.decodes_at_once,
            "filled_gib": round(plan.device_bytes / GiB, 2), "budget_gib": round(plan.budget / GiB, 2)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="33 frames only (one meta measurement): the CI smoke run")
    parser.add_argument("--mfu", type=float, default=MFU, help="model-FLOP utilisation assumed")
    parser.add_argument("--model", type=Path, default=MODEL)
    args = parser.parse_args(argv)
    flop_rate = PEAK_BF16 * args.mfu
    cases, targets = [], {}
    for frames in (33,) if args.quick else FRAMES:
        footprint = measure_footprint(args.model, frames=frames, max_batch=max(REQUESTS))
        for budget in BUDGETS_GIB:
            try:
                plan = make_plan(footprint, Target(budget * GiB, HOST_MEMORY, max_batch=max(REQUESTS)))
            except PlanRefused as exc:
                cases.append({"frames": frames, "budget_gib": budget, "refused": str(exc)})
                continue
            for requests in REQUESTS:
                predicted = estimate(plan, requests, flop_rate)
                cases.append({"frames": frames, "budget_gib": budget, "requests": requests,
                              "plan": plan_summary(plan), "estimate": predicted})
                if frames == 129 and budget in TARGETS:
                    targets[f"129 frames, {budget} GiB, {requests} request(s)"] = {
                        "limit": TARGETS[budget], "estimate": predicted["video_ratio"],
                        "met": predicted["video_ratio"] <= TARGETS[budget]}
    result = {
        "kind": "estimate (meta-device FLOP and byte counts x the constants below; not a measurement)",
        "constants": {"peak_bf16_flops": PEAK_BF16, "mfu": args.mfu, "h2d_bytes_per_s": H2D_BYTES_PER_S,
                      "steps": STEPS, "rows_per_request": ROWS_PER_REQUEST, "routing": "top-1, uniform and independent per request and step",
                      "host_memory": HOST_MEMORY},
        "cases": cases, "targets": targets,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
