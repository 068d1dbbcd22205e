"""Time one default text-to-video generation of the shipped paris-mini (CPU by default).

    python -m tests.benchmarks.bench_generate [--model weights/paris-mini] [--repeats 5] [--threads 2]

Prints JSON: load time, the first (cold) generation, and the median / min / max of the warm
repeats, all with the model's default steps, guidance, size and frame count.
"""

import argparse
import json
import statistics
import time

import torch


def main(argv=None) -> int:
    from weights import DEFAULT_MODEL

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", default="a red circle moving left")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from pipeline.generate import generate
    from pipeline.loader import load_model, quiet_library_logging
    from pipeline.request import GenerationRequest

    quiet_library_logging()
    start = time.perf_counter()
    model = load_model(args.model)
    load_s = time.perf_counter() - start

    def once(seed: int) -> float:
        t0 = time.perf_counter()
        generate(model, GenerationRequest(prompt=args.prompt, seed=seed))
        return time.perf_counter() - t0

    cold = once(0)
    warm = [once(i + 1) for i in range(args.repeats)]
    s = model.manifest.sampling
    print(json.dumps({
        "benchmark": "generate_t2v_default",
        "model": args.model,
        "threads": args.threads,
        "defaults": {"steps": s.num_inference_steps, "guidance": s.guidance_scale, "size": s.size,
                     "frames": s.num_frames, "top_k": s.top_k},
        "load_s": round(load_s, 3),
        "cold_generate_s": round(cold, 3),
        "warm_generate_s": {"median": round(statistics.median(warm), 3), "min": round(min(warm), 3),
                            "max": round(max(warm), 3), "n": len(warm)},
        "limit_s": 10.0,
        "within_limit": cold <= 10.0 and statistics.median(warm) <= 10.0,
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
