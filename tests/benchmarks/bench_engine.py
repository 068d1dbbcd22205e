"""Engine benchmarks on one machine, all ratios measured in one run:
- throughput: 8 concurrent mixed text-to-video jobs batched vs the same engine one after another,
  with the same ratio for the model forwards alone (what batching can save when the forwards are
  compute-bound: the engine cannot beat it);
- expert loads per video with a device budget that holds one expert, batched vs one after another;
- engine overhead: time outside model forwards as a share of the tick, at batch 1.
Prints one JSON object."""

import argparse
import json
import statistics
import time

import torch

from pipeline.engine import Engine
from pipeline.loader import load_model, quiet_library_logging
from pipeline.models.expert import image_positions
from pipeline.request import GenerationRequest
from tests.support.jobs import one_expert_budget, run_jobs as run
from weights import DEFAULT_MODEL

PROMPTS = ["a red circle moving left", "a blue square growing", "a green triangle fading out", "a yellow circle moving up",
           "a cyan square shrinking", "a magenta triangle fading in", "a red square moving right", "a blue circle growing"]


def jobs(n: int) -> list[tuple[str, GenerationRequest]]:
    return [(f"job{i}", GenerationRequest(PROMPTS[i % len(PROMPTS)], seed=i)) for i in range(n)]


def one_by_one(model, batch_jobs) -> tuple[float, Engine]:
    engine = Engine(model, max_batch=1)
    start = time.perf_counter()
    for job in batch_jobs:
        run(engine, [job])
    return time.perf_counter() - start, engine


@torch.inference_mode()
def expert_forward_ms(model, rows, repeats=20) -> dict:
    """Median time of one expert forward at the default request's shapes, by batch rows: the fixed
    cost per forward is what batching saves; the per-row cost it cannot."""
    expert, cfg = model.get("expert_0"), model.expert_config
    size = int(model.manifest.sampling.size.split("x")[0]) // model.spatial_compression
    frames = (model.manifest.sampling.num_frames - 1) // model.temporal_compression + 1
    n_img, n_txt = frames * (size // cfg.patch_size) ** 2, model.manifest.components.t5.max_length
    out = {}
    for b in rows:
        args = dict(img=torch.randn(b, n_img, cfg.in_channels), img_ids=image_positions(frames, size, size)[None].expand(b, -1, -1),
                    txt=torch.randn(b, n_txt, cfg.context_in_dim), txt_ids=torch.zeros(b, n_txt, 3),
                    timesteps=torch.rand(b), y_vec=torch.randn(b, cfg.vec_in_dim),
                    cond=torch.zeros(b, n_img, (cfg.in_channels // cfg.patch_size**2 + 1) * cfg.patch_size**2))
        expert(**args)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            expert(**args)
            times.append(time.perf_counter() - start)
        out[b] = round(1000 * statistics.median(times), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="alternating one-by-one / batched pairs")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()
    quiet_library_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = jobs(args.jobs)

    model = load_model(args.model)
    run(Engine(model, max_batch=1), jobs(1))  # warm-up: weights resident, caches hot
    model.residency.stats.__init__()
    # A shared machine drifts between runs: alternate the two modes and keep every pair's ratio.
    pairs = []
    for _ in range(args.repeats):
        seq_s, seq_engine = one_by_one(model, work)
        batched = Engine(model, max_batch=args.jobs)
        start = time.perf_counter()
        run(batched, work)
        pairs.append((seq_s, time.perf_counter() - start, seq_engine, batched))
    seq_s, batch_s, seq_engine, batched = sorted(pairs, key=lambda p: p[0] / p[1])[len(pairs) // 2]  # median pair
    ratios = [round(p[0] / p[1], 2) for p in pairs]
    overhead = 1 - seq_engine.stats.forward_seconds / seq_engine.stats.tick_seconds

    budget = one_expert_budget(model)
    seq_model = load_model(args.model, budget_bytes=budget)
    one_by_one(seq_model, work)
    seq_loads = seq_model.residency.stats.expert_loads() / args.jobs
    by_wait = {}
    steps = model.manifest.sampling.num_inference_steps
    # The fairness bound trades against loads: a longer wait, fewer switches. Loading each expert
    # once needs a group to wait through two others' whole runs: 2 x steps ticks.
    for max_wait in (8, 24, 2 * steps):
        b_model = load_model(args.model, budget_bytes=budget)
        b_results = run(Engine(b_model, max_batch=args.jobs, max_wait=max_wait), work)
        loads = b_model.residency.stats.expert_loads() / args.jobs
        by_wait[f"max_wait_{max_wait}"] = {
            "batched_per_video": round(loads, 3), "ratio": round(loads / seq_loads, 3),
            "wait_bound_ticks": max_wait + args.jobs - 1,
            "max_waited_ticks": max(r.residency.max_waited_ticks for r in b_results.values())}

    forward_ms = expert_forward_ms(model, rows=sorted({1, 2, 4, 8, 2 * args.jobs}))
    print(json.dumps({
        "model": model.name, "jobs": args.jobs, "threads": torch.get_num_threads(),
        "throughput": {"one_by_one_jobs_per_min": round(60 * args.jobs / seq_s, 2),
                       "batched_jobs_per_min": round(60 * args.jobs / batch_s, 2),
                       "ratio": round(seq_s / batch_s, 2), "target_ratio": 3.0, "ratio_of_each_pair": ratios,
                       "model_forward_seconds": {"one_by_one": round(seq_engine.stats.forward_seconds, 3),
                                                 "batched": round(batched.stats.forward_seconds, 3),
                                                 "ratio": round(seq_engine.stats.forward_seconds
                                                                / batched.stats.forward_seconds, 2)},
                       "expert_forward_ms_by_rows": forward_ms,
                       # the most batching could give even with every job on one expert: one forward of
                       # 16 rows (8 jobs x 2 CFG branches) against 8 forwards of 2 rows
                       "one_expert_best_case_ratio": round(args.jobs * forward_ms[2] / forward_ms[2 * args.jobs], 2)},
        "expert_loads_one_expert_budget": {"budget_bytes": budget, "one_by_one_per_video": round(seq_loads, 3),
                                           "target_ratio": 0.25,
                                           # each expert must be loaded once at least: 3 experts over 8 videos
                                           "lowest_possible_ratio": round(model.num_experts / args.jobs / seq_loads, 3),
                                           **by_wait},
        "engine_overhead_batch1": {"share_of_tick": round(overhead, 4), "target": 0.15,
                                   "tick_ms": round(1000 * seq_engine.stats.tick_seconds / seq_engine.stats.ticks, 2)},
    }, indent=2))


if __name__ == "__main__":
    main()
