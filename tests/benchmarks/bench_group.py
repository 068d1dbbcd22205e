"""The worker group (pipeline/distributed): measured on this CPU, estimated for Paris 2.0.

Measured (paris-mini, gloo, spawned ranks on this machine): the same jobs in one process and
through groups of 2 and 3 ranks (tests/distributed/group_check.py): whether the frames are equal,
bytes exchanged per step and per video, wall time as it comes (the machine is shared: timings are
indicative only).

Estimated (ESTIMATES, not measurements): Paris 2.0 at 256x256, 129 and 33 frames, 50 steps,
text-to-video (2 CFG rows a request), top-1 routing uniform and seeded, requests arriving
together. Inputs:
- FLOPs of one expert row and of one VAE decode: the meta-device footprint (pipeline/planner);
- the placement `paris plan --devices N` makes (pipeline/planner/placement.py);
- bytes per message: the group runner's own message code run on meta tensors of Paris 2.0's
  shapes (latents, conditioning, velocities in bf16), plus its pickled headers;
- seconds: FLOPs at real_size.PEAK_BF16 x real_size.MFU (989 TFLOP/s x 45%, the constants of
  tests/benchmarks/real_size.py, so one device here is real_size's one device), bytes at the
  stated link speeds below plus a latency per message;
- independent replicas (today's `paris serve --devices`): real_size.simulate, the engine's own
  scheduler and residency (streaming included) on the meta device, one GPU per replica.
A group tick lasts its busiest rank's compute plus every byte of the tick over rank 0's link
(conservative: the exchange is not overlapped with compute); rank 0 decodes finished videos.
An expert on several ranks splits its rows evenly (the runner's sticky least-loaded choice).

Run: python -m tests.benchmarks.bench_group [--tiny]   (--tiny: CI smoke, paris-mini only)
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from pipeline.distributed.group import GroupInfo
from pipeline.distributed.runner import GroupRunner
from pipeline.planner.footprint import Footprint, measure_footprint
from pipeline.planner.placement import place
from pipeline.planner.plan import Target, make_plan
from pipeline.sampling import Branch
from weights import DEFAULT_MODEL

from . import real_size

GiB = 2**30
HOST = 512 * GiB
STEPS = real_size.STEPS
# bytes/s one way, seconds per message (stated, not measured here)
LINKS = {"NVLink 4": (400e9, 10e-6), "PCIe 5 x16": (50e9, 10e-6), "100 GbE": (11e9, 50e-6),
         "10 GbE": (1.1e9, 50e-6), "1 GbE": (0.11e9, 50e-6)}
CASES = [(1, 80), (2, 80), (3, 80), (4, 80), (8, 80), (3, 48)]  # (GPUs, GiB each)
PER_REPLICA = 8  # requests a replica serves at once (max_batch); a group of N serves N times as many
TARGETS = {"latency_2x80_over_1x80": 0.6, "jobs_per_min_3x48_33f_over_replicas": 1.5, "exchange_share_10gbe_129f": 0.03}


# -- measured ------------------------------------------------------------------------------
def measured(tiny: bool) -> list[dict]:
    runs = [(2, "experts on rank 1"), (3, "one expert per rank")]
    out = []
    for world, placement in runs:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "report.json"
            argv = [sys.executable, "-m", "tests.distributed.group_check", "--devices", ",".join(["cpu"] * world),
                    "--out", str(path), "--speeds", "quality", "--only", placement,
                    "--steps", "4" if tiny else "20", "--jobs", "2" if tiny else "6"]
            subprocess.run(argv, check=True, capture_output=True, timeout=600)
            s = json.loads(path.read_text())["scenarios"][0]
        out.append({"ranks": world, "placement": placement, "experts": s["experts"], "jobs": s["jobs"],
                    "steps": s["steps"], "frames_equal_to_one_process": all(s["equal"]),
                    "bytes_total": s["bytes"], "bytes_per_step": round(s["bytes"] / max(1, s["ticks_exchanged"])),
                    "bytes_per_video": round(s["bytes"] / s["jobs"]),
                    "seconds_one_process": s["seconds_one_process"], "seconds_group": s["seconds_group"]})
    return out


# -- bytes per message, from the runner's own code on meta tensors --------------------------
def message_bytes(f: Footprint, config, wire=torch.bfloat16) -> dict:
    """Bytes rank 0 sends a rank for one t2v request: its first tick (conditioning + latents)
    and every later tick (latents); bytes back per row (one velocity) and per reply header."""
    shape, meta = f.shape, torch.device("meta")
    emb = lambda: SimpleNamespace(tokens=torch.empty(1, shape.text_tokens, config.context_in_dim, device=meta),
                                  pooled=torch.empty(1, config.vec_in_dim, device=meta))
    s = SimpleNamespace(job_id="video_" + "0" * 32, prompt=emb(), negative=emb(), first_frame_cond=None, step=0, t=1.0,
                        img_ids=torch.empty(1, shape.image_tokens, 3, dtype=torch.long, device=meta),
                        latents=torch.empty(1, config.in_channels // config.patch_size**2, shape.latent_frames,
                                            shape.latent_height, shape.latent_width, device=meta),
                        request=SimpleNamespace(speed="quality"), total=STEPS)
    runner = GroupRunner(GroupInfo(0, 2, torch.device("cpu"), "gloo", 60.0), {"expert_0": (1,)}, wire)
    runner.job_texts[s.job_id] = ("a prompt of about this many characters, templated " * 2, "")
    chunk = [("expert_0", [(s, Branch.COND), (s, Branch.UNCOND_TEXT)])]

    def size(message):
        header, tensors = message
        import pickle
        return len(pickle.dumps({**header, "tensors": [(tuple(t.shape), str(t.dtype)) for t in tensors]})) + \
            sum(t.numel() * t.element_size() for t in tensors)

    first = size(runner._message(1, chunk, {s.job_id: s}))
    later = size(runner._message(1, chunk, {s.job_id: s}))
    velocity = shape.image_tokens * config.in_channels * torch.tensor([], dtype=wire).element_size()
    return {"first_tick": first, "later_tick": later, "velocity_per_row": velocity, "reply_header": 200}


# -- the group's timeline ------------------------------------------------------------------
def group_seconds(f: Footprint, experts: dict[str, tuple[int, ...]], streamed: dict[int, set], requests: int,
                  link: tuple[float, float], msg: dict, rate: float) -> dict:
    bandwidth, latency = link
    row_s = f.expert.flops_per_row.total / rate
    copy_s = f.weights[f.expert_names[0]] / real_size.H2D_BYTES_PER_S
    decode_s = f.decode_flops / rate
    rng = random.Random(real_size.SEED)
    names = f.expert_names
    seen, total, exchange, compute = set(), 0.0, 0.0, 0.0
    for step in range(STEPS):
        choice = [names[rng.randrange(len(names))] for _ in range(requests)]
        busy: dict[int, float] = {}
        sent = 0
        messages = set()
        for e in names:
            rows = [(j, b) for j, c in enumerate(choice) if c == e for b in (0, 1)]
            holders = experts[e]
            for i, rank in enumerate(holders):
                mine = rows[i::len(holders)]  # even split, as the sticky least-loaded choice gives
                if not mine:
                    continue
                t = len(mine) * row_s
                busy[rank] = busy.get(rank, 0.0) + (max(t, copy_s) if e in streamed.get(rank, ()) else t)
                if rank == 0:
                    continue
                messages.add(rank)
                for j in {j for j, _ in mine}:
                    sent += msg["later_tick"] if (j, rank) in seen else msg["first_tick"]
                    seen.add((j, rank))
                sent += len(mine) * msg["velocity_per_row"]
        x = sent / bandwidth + 2 * len(messages) * latency
        c = max(busy.values())
        exchange += x
        compute += c
        total += x + c
    total += requests * decode_s
    return {"seconds": total, "exchange_s": exchange, "compute_s": compute, "decode_s": requests * decode_s,
            "exchange_share_of_step": exchange / compute}


def replica_seconds(f: Footprint, gib: int, requests: int, model: Path, passes, rate: float) -> dict:
    plan = make_plan(f, Target(gib * GiB, HOST, max_batch=PER_REPLICA))
    extras = real_size.measure_extras(model, f.shape)  # router and text encoders, as a replica runs them
    s = real_size.simulate(plan, requests, passes, extras, rate, plan.stream_batch, real_size.expert_builder(model))
    return {"seconds": s["all_videos_s"], "streamed": plan.streamed}


def estimates(model: Path, frames_list, cases, rate: float) -> dict:
    out = {}
    for frames in frames_list:
        f = measure_footprint(model, frames=frames, max_batch=PER_REPLICA)
        config = real_size.expert_builder(model)().config
        msg = message_bytes(f, config)
        passes = real_size.Passes(f.shape)
        rows = []
        for n, gib in cases:
            replica_1 = replica_seconds(f, gib, 1, model, passes, rate)
            replica_8 = replica_seconds(f, gib, PER_REPLICA, model, passes, rate)
            row = {"gpus": n, "gib": gib, "replicas": {
                "streamed_experts_per_replica": len(replica_1["streamed"]),
                "latency_s": round(replica_1["seconds"], 2),
                "jobs_per_min": round(n * 60 * PER_REPLICA / replica_8["seconds"], 2)}}
            if n > 1:
                for label, copies in (("group", False), ("group_stream_copies", True)):
                    p = place(f, [Target(gib * GiB, HOST, max_batch=PER_REPLICA)] * n, stream_copies=copies)
                    streamed = {r: set(v) for r, v in p.streamed.items()}
                    row[label] = {"placement": {e: list(r) for e, r in p.experts.items()},
                                  "streamed": {r: sorted(v) for r, v in streamed.items()}}
                    for name, link in LINKS.items():
                        one = group_seconds(f, p.experts, streamed, 1, link, msg, rate)
                        full = group_seconds(f, p.experts, streamed, n * PER_REPLICA, link, msg, rate)
                        jobs = 60 * n * PER_REPLICA / full["seconds"]
                        row[label][name] = {
                            "latency_s": round(one["seconds"], 2),
                            "latency_vs_one_replica": round(one["seconds"] / replica_1["seconds"], 3),
                            "jobs_per_min": round(jobs, 2),
                            "jobs_per_min_vs_replicas": round(jobs / row["replicas"]["jobs_per_min"], 3),
                            "exchange_share_of_step_1_request": round(one["exchange_share_of_step"], 4),
                            "exchange_share_of_step_full": round(full["exchange_share_of_step"], 4)}
            rows.append(row)
        out[f"{frames} frames"] = {"message_bytes": msg, "row_seconds": round(f.expert.flops_per_row.total / rate, 4),
                                   "decode_seconds": round(f.decode_flops / rate, 3), "cases": rows}
    return out


def targets(est: dict) -> dict:
    def case(frames, n, gib):
        return next(c for c in est[f"{frames} frames"]["cases"] if c["gpus"] == n and c["gib"] == gib)

    def check(value, name, at_most=True):
        limit = TARGETS[name]
        return {"estimate": value, "limit": limit, "met": value <= limit if at_most else value >= limit}

    got = {}
    if "129 frames" in est:
        c = case(129, 2, 80)
        got["latency_2x80_over_1x80"] = check(c["group"]["NVLink 4"]["latency_vs_one_replica"], "latency_2x80_over_1x80")
        got["latency_2x80_over_1x80 (--group-stream-copies)"] = check(
            c["group_stream_copies"]["NVLink 4"]["latency_vs_one_replica"], "latency_2x80_over_1x80")
        shares = [c[label]["10 GbE"][k] for label in ("group", "group_stream_copies")
                  for k in ("exchange_share_of_step_1_request", "exchange_share_of_step_full")]
        got["exchange_share_10gbe_129f"] = check(max(shares), "exchange_share_10gbe_129f")
    if "33 frames" in est:
        c = case(33, 3, 48)
        for label in ("group", "group_stream_copies"):
            suffix = "" if label == "group" else " (--group-stream-copies)"
            got["jobs_per_min_3x48_33f_over_replicas" + suffix] = check(
                c[label]["PCIe 5 x16"]["jobs_per_min_vs_replicas"], "jobs_per_min_3x48_33f_over_replicas", at_most=False)
    return got


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CI smoke: few steps and jobs; estimates on paris-mini, 2x and 3x")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rate = real_size.PEAK_BF16 * real_size.MFU
    if args.tiny:  # a slow rate so that paris-mini's seconds survive rounding: the code runs, the numbers mean nothing
        rate /= 1e6
        est = estimates(DEFAULT_MODEL, (9,), [(1, 3), (2, 3), (3, 3)], rate)
    else:
        est = estimates(real_size.MODEL, (129, 33), CASES, rate)
    result = {
        "measured_cpu": {"machine": "2 shared CPU cores, gloo; timings indicative only", "runs": measured(args.tiny)},
        "estimate": {"kind": "estimate (meta-device FLOPs and message bytes x stated rates; not a measurement)",
                     "constants": {"flops_per_s": rate, "peak_bf16_flops": real_size.PEAK_BF16, "mfu": real_size.MFU,
                                   "h2d_bytes_per_s": real_size.H2D_BYTES_PER_S, "steps": STEPS,
                                   "links_bytes_per_s_and_latency_s": LINKS, "requests_per_replica": PER_REPLICA,
                                   "routing": f"top-1, uniform, seeded ({real_size.SEED})"},
                     "by_frames": est, "targets": {} if args.tiny else targets(est)},
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
