"""A worker group's rank 0 running fixed jobs under several placements, against one process.

    python -m tests.distributed.group_check --devices cpu,cpu --out result.json
    torchrun ... -m tests.distributed.group_check --out result.json   (every rank runs this)

Rank 0 runs each scenario's jobs twice on the same model: in one process (no runner), then
through the group; it writes per scenario whether the decoded frames are equal, the largest
difference, and the bytes exchanged. Used by tests/distributed and the benchmark.
"""

import argparse
import json
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline.distributed.group import DEFAULT_TIMEOUT_S, GroupFailed, join_group, leave_group, torchrun_env
from pipeline.distributed.launch import end_ranks, serve_rank, start_ranks
from pipeline.distributed.runner import GroupRunner
from pipeline.engine import Engine
from pipeline.generate import generate_batch
from pipeline.loader import load_model, quiet_library_logging
from pipeline.request import GenerationRequest, resolve
from pipeline.results import Failed, Finished
from weights import DEFAULT_MODEL


def first_frame() -> Image.Image:
    image = Image.new("RGB", (32, 32))
    ImageDraw.Draw(image).ellipse((8, 8, 22, 22), fill=(255, 0, 0))
    return image


def jobs(speed: str, steps: int, count: int = 4) -> list[GenerationRequest]:
    """t2v and i2v, top-1 and top-2 routing, shared and distinct prompts."""
    base = [GenerationRequest("a red circle moving left", seed=0),
            GenerationRequest("a blue square growing", seed=1, top_k=2),
            GenerationRequest("a red circle moving right", seed=2, image=first_frame()),
            GenerationRequest("a green triangle fading out", seed=3),
            GenerationRequest("a red circle moving left", seed=4, image=first_frame(), top_k=2),
            GenerationRequest("a blue square growing", seed=5)]
    out = []
    for r in base[:count]:
        r.num_inference_steps, r.speed = steps, speed
        out.append(r)
    return out


def run_jobs(engine: Engine, requests) -> list[np.ndarray]:
    """Every request's frames, on the given engine (alone, or through the group's runner)."""
    return [result.frames for result in generate_batch(engine.model, requests, engine=engine)]


def placements(world: int) -> dict[str, dict[str, tuple[int, ...]]]:
    """Named placements of the three experts over `world` ranks."""
    if world == 2:
        return {"experts on rank 1": {"expert_0": (1,), "expert_1": (1,), "expert_2": (1,)},
                "split 0/1": {"expert_0": (0,), "expert_1": (1,), "expert_2": (1,)},
                "replicated on 0 and 1": {f"expert_{i}": (0, 1) for i in range(3)}}
    return {"one expert per rank": {"expert_0": (0,), "expert_1": (1,), "expert_2": (2,)},
            "experts on ranks 1 and 2": {"expert_0": (1,), "expert_1": (2,), "expert_2": (1,)},
            "replicated on 1 and 2": {f"expert_{i}": (1, 2) for i in range(3)}}


def rank0(group, model, args) -> dict:
    report = {"world_size": group.world_size, "backend": group.backend, "scenarios": []}
    for speed in args.speeds.split(","):
        requests = jobs(speed, args.steps, args.jobs)
        t0 = time.perf_counter()
        alone = run_jobs(Engine(model, max_batch=args.max_batch), requests)
        alone_s = time.perf_counter() - t0
        for name, placement in placements(group.world_size).items():
            if args.only and name not in args.only.split(";"):
                continue
            runner = GroupRunner.for_model(group, model, placement)
            engine = Engine(model, max_batch=args.max_batch, expert_runner=runner)
            t0 = time.perf_counter()
            together = run_jobs(engine, requests)
            seconds = time.perf_counter() - t0
            diffs = [float(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(alone, together)]
            report["scenarios"].append({
                "speed": speed, "placement": name, "experts": {k: list(v) for k, v in placement.items()},
                "jobs": len(requests), "steps": args.steps, "equal": [bool(np.array_equal(a, b)) for a, b in zip(alone, together)],
                "max_pixel_difference": diffs, "bytes": runner.traffic.total, "messages": runner.traffic.messages,
                "ticks_exchanged": runner.steps,
                "most_conditioning_sends": max(runner.conditioning_sends.values()),
                "bytes_streamed_on_ranks": sum(runner.bytes_streamed.values()), "seconds_one_process": round(alone_s, 3),
                "seconds_group": round(seconds, 3),
            })
            print(json.dumps(report["scenarios"][-1]), file=sys.stderr, flush=True)
    runner.stop()
    return report


def broken_expert(group, model, args) -> dict:
    """With expert_2's weights unreadable on rank 1 (the test breaks them): a request routed to it
    fails with the stage's code, naming the rank; one routed to expert_0 (also on rank 1)
    completes, and so does a request admitted after the failure."""
    placement = {f"expert_{i}": (1,) for i in range(3)}
    runner = GroupRunner.for_model(group, model, placement)
    engine = Engine(model, max_batch=4, expert_runner=runner)
    fixed = lambda prompt, expert: GenerationRequest(prompt, seed=0, routing="fixed", expert=expert, num_inference_steps=3)
    outcomes = {}

    def run(requests):
        for job_id, r in requests:
            engine.admit(job_id, resolve(model.manifest, r))
        while engine.has_work:
            for event in engine.tick():
                match event:
                    case Finished(job_id=job_id):
                        outcomes[job_id] = {"status": "completed"}
                    case Failed(job_id=job_id, message=message, code=code):
                        outcomes[job_id] = {"status": "failed", "code": code, "message": message}

    run([("to expert 2", fixed("a green triangle fading out", 2)), ("to expert 0", fixed("a red circle moving left", 0))])
    run([("after", fixed("a red circle moving right", 0))])
    runner.stop()
    return {"world_size": group.world_size, "outcomes": outcomes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", default="cpu,cpu", help="one per rank (ignored under torchrun)")
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--speeds", default="quality,fast")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--only", help="placement names, ';'-separated")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    p.add_argument("--streams", help="experts rank 1 streams block by block, e.g. 1:expert_0,expert_2")
    p.add_argument("--broken-expert", action="store_true", help="run broken_expert() instead of the scenarios")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    quiet_library_logging()
    env = torchrun_env()
    procs = []
    if env is None:
        devices = args.devices.split(",")
        streams = {}
        if args.streams:
            rank, names = args.streams.split(":")
            streams = {int(rank): {name: 2 for name in names.split(",")}}  # a 2-block window
        init, procs = start_ranks(devices, args.model, args.timeout, threads=1, streams=streams)
        model = load_model(args.model)  # before joining, as every rank does
        group = join_group(0, len(devices), devices[0], args.timeout, init)
    else:
        rank, world, _ = env
        if rank != 0:
            return serve_rank(rank, world, "cpu", args.model, args.timeout, None, threads=1)
        model = load_model(args.model)
        group = join_group(0, world, "cpu", args.timeout)
    try:
        report = (broken_expert if args.broken_expert else rank0)(group, model, args)
    except GroupFailed as exc:
        print(f"group failed: {exc}", file=sys.stderr)
        return 1
    finally:
        leave_group()
        end_ranks(procs)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
