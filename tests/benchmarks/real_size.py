"""Predicted time per video of Paris 2.0 at real size, under the residency plan `paris plan` makes
for each device budget. ESTIMATES, not measurements: the engine's own pieces run on the meta
device with weights/paris-2's configs (no weights, no GPU), and seconds come from the constants
printed with them.

Cases: 256x256 at 129 and 33 frames; 1 and 8 concurrent text-to-video requests (2 CFG rows
each), arriving together; device budgets of 141, 80, 48 and 24 GiB (host memory ample).

What runs, per case:
- the planner (pipeline/planner) measures the model and makes the plan for the budget: which
  experts stay resident, which stream and with what window, rows per forward;
- `Residency("meta")` holds the three experts (built on the meta device) as the plan places
  them: resident ones placed before the clock starts (a warm server), streamed ones passing
  block by block through the window by the residency's own hooks;
- `ExpertScheduler` decides every tick which requests advance, in which order the experts run
  and what is prefetched; routing is top-1, uniform and seeded (the router needs weights);
- every expert pass is the real forward on meta tensors under FlopCounterMode.
`Timeline`, the residency's transfer backend here, turns what the residency issues into time as
CUDA would run it (see pipeline/residency/transfers.py and cuda.py): a compute stream running
FLOPs at PEAK_BF16 * MFU; a copy stream at H2D_BYTES_PER_S; a copy issued ahead starts once the
copy stream is free and the compute issued before it is done (its buffer is taken on the compute
stream); the compute stream waits for a copy before reading it. Bytes moved are the residency's
counters.

A meta forward of the 11B expert costs about a second of Python and a case runs up to 150 passes,
so each kind of pass (resident or streamed, per clip size) runs once, at one row, with what it
issues recorded; the others replay the recording with its compute scaled by their rows (every op
of a forward is per row: FLOPs are linear in rows) and count the bytes the recorded pass moved.
The smoke test checks a replay against a real pass on a tiny expert.

The residency is configured from the plan as the worker configures it (planner.serving.
residency_settings: the weight budget, the encoders' phase room); the encoders are components of
their plan sizes. Before denoising, the batch of new prompts: T5 and CLIP brought as the engine
asks (an on-demand T5 copied in on the compute stream), their FLOPs (measured on meta) on the
compute stream, then the on-demand encoders leave; `resident_expert_reloads` counts a resident
expert an encoder evicted and the denoising brought back (0 since N5). Every tick the router
runs for every request that advanced last tick (its FLOPs measured on meta).

Compute-only: the same FLOPs (experts, router, encoders) at the same rate, every weight
resident, nothing copied. Per video: encoding, denoising, and the decodes at DECODE_MFU (an
assumed utilisation), divided by the number of videos. `estimate` runs the scheduler with the
worker's own `stream_batch` (its plan is made at the model's largest clip: 1 for paris-2);
where a plan made at this clip would gather more (33 frames: 3) and several requests share a
tick, `estimate_gathering_streamed_rows` runs it again with that.

Run: python -m tests.benchmarks.real_size [--quick] [--mfu 0.45]
"""

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.manifest import read_manifest
from pipeline.planner.footprint import ClipShape, expert_forward, measure_footprint
from pipeline.planner.meta import meta_module
from pipeline.planner.footprint import clip_encode, router_forward, t5_encode
from pipeline.planner.plan import GiB, Placement, Plan, PlanRefused, Target, make_plan, stream_batch_for
from pipeline.planner.serving import residency_settings
from pipeline.residency import Residency
from pipeline.residency.transfers import Transfers
from pipeline.scheduler import ExpertScheduler, RequestNeeds

MODEL = Path(__file__).resolve().parents[2] / "weights" / "paris-2"
PEAK_BF16 = 989e12  # H100 SXM, dense bf16 tensor-core FLOP/s (NVIDIA's datasheet)
# Model-FLOP utilisation of the expert forward. Open-Sora 2.0 reports 60 s for this model at
# 256x256, 129 frames, 50 steps on one H100 with 3 forward rows per step: 50 * 3 * 171.9 TFLOP
# (per row, counted here) = 25.8 PFLOP in 60 s is 430 TFLOP/s, 43% of peak with T5, the VAE and
# offload included; the readiness notes put eager bf16 with FA2 at ~0.8 s per 2-row step (43%),
# cuDNN attention or FA3 with compile higher. 45% is that eager figure, rounded up a little.
MFU = 0.45
H2D_BYTES_PER_S = 50e9  # pinned host-to-device over PCIe 5 x16, as measured in the field notes
# The VAE decode's utilisation: cuDNN's Conv3d on NCDHW runs far below the transformer's, and the
# decoder moves ~255 GB of GroupNorm/SiLU/pad traffic per 129-frame video (gpu-review-2 puts one
# decode at 0.5-0.7 s on an H100 for its 145 TFLOP): 25% is that model's middle. An assumption
# until tests/benchmarks/gpu_expert_11b.py times a decode.
DECODE_MFU = 0.25
STEPS = 50
ROWS_PER_REQUEST = 2  # text-to-video: conditional and unconditional rows
HOST_MEMORY = 512 * GiB  # ample: these cases are about the device budget
FRAMES = (129, 33)
REQUESTS = (1, 8)
BUDGETS_GIB = (141, 80, 48, 24)
TARGETS = {80: 1.05, 48: 1.10}  # issue 12: 129 frames, predicted time / compute-only time
MAX_WAIT = 24  # the engine's default fairness bound
SEED = 0


@dataclass
class _Pending:
    done: float  # when the copy ends
    index: int | None  # its place in the recording, while one is made


class Timeline(Transfers):
    """The residency's copies on the meta device, as time on two CUDA streams."""

    overlaps = True

    def __init__(self, flop_rate: float, copy_rate: float):
        super().__init__(torch.device("meta"))
        self.flop_rate, self.copy_rate = flop_rate, copy_rate
        self.compute_end = 0.0  # the compute stream is done with everything issued to it
        self.copy_end = 0.0  # the copy stream is done
        self._counter: FlopCounterMode | None = None  # the FLOPs of the forward being recorded
        self._counted = 0
        self._ops: list | None = None

    def copy(self, dst, src) -> None:  # on the compute stream: it holds the compute stream and the bus
        self._catch_up()
        self._log("copy", dst.numel())

    def ahead(self, pairs) -> _Pending:
        self._catch_up()
        index = None if self._ops is None else len(self._ops)
        return _Pending(self._log("ahead", sum(dst.numel() for dst, _ in pairs)), index)

    def wait(self, pending: _Pending | None) -> None:
        if pending is not None:
            self._catch_up()
            self._run("wait", pending.done)
            if self._ops is not None:
                self._ops.append(("wait", pending.index))

    def _catch_up(self) -> None:
        """The compute issued since the last operation, from the running FLOP count."""
        if self._counter is not None:
            total = self._counter.get_total_flops()
            self._log("compute", total - self._counted)
            self._counted = total

    def _log(self, kind: str, amount: float) -> float:
        if self._ops is not None:
            self._ops.append((kind, amount))
        return self._run(kind, amount)

    def _run(self, kind: str, amount: float) -> float:
        if kind == "compute":
            self.compute_end += amount / self.flop_rate
        elif kind == "copy":
            self.compute_end = self.copy_end = max(self.compute_end, self.copy_end) + amount / self.copy_rate
        elif kind == "ahead":
            self.copy_end = max(self.copy_end, self.compute_end) + amount / self.copy_rate
            return self.copy_end
        else:  # wait
            self.compute_end = max(self.compute_end, amount)
        return self.compute_end

    def record(self, forward) -> list[tuple[str, float]]:
        """Runs `forward()` with its FLOPs counted; returns what it issued, in order, and leaves
        the clocks as they were."""
        clocks = self.compute_end, self.copy_end
        self._ops, self._counted = [], 0
        with FlopCounterMode(display=False) as counter:
            self._counter = counter
            forward()
            self._catch_up()
        self._counter = None
        ops, self._ops = self._ops, None
        self.compute_end, self.copy_end = clocks
        return ops

    def replay(self, ops: list[tuple[str, float]], rows: int) -> None:
        """A recorded one-row forward again, at `rows` rows."""
        done = {}
        for i, (kind, amount) in enumerate(ops):
            if kind == "wait":
                self._run("wait", done[amount])
            else:
                done[i] = self._run(kind, amount * rows if kind == "compute" else amount)


@dataclass
class _Recording:
    ops: list[tuple[str, float]]
    flops_per_row: int
    moved: int  # bytes the pass copied to the device, from the residency's counters


class Passes:
    """Expert forwards at one clip shape: each kind (resident, streamed) recorded once, at one
    row, then replayed."""

    def __init__(self, shape: ClipShape):
        self.shape = shape
        self._recordings: dict[bool, _Recording] = {}

    def run(self, residency: Residency, timeline: Timeline, module, streamed: bool, rows: int) -> tuple[int, int]:
        """One pass of `rows` rows on the timeline; (FLOPs, bytes moved that the residency's
        counters did not see: those of replayed passes)."""
        replayed = streamed in self._recordings
        if not replayed:
            before = residency.stats.bytes_to_device

            def forward():  # no_grad: on meta, an inference tensor cannot become a parameter's data
                with torch.no_grad(), torch.device("meta"):
                    expert_forward(module, self.shape, 1)

            ops = timeline.record(forward)
            flops = sum(amount for kind, amount in ops if kind == "compute")
            self._recordings[streamed] = _Recording(ops, flops, residency.stats.bytes_to_device - before)
        recording = self._recordings[streamed]
        timeline.replay(recording.ops, rows)
        return recording.flops_per_row * rows, recording.moved if replayed else 0


def expert_builder(folder: Path):
    components = read_manifest(folder).components
    return lambda: meta_module(components.experts[0], folder / components.experts[0].path)  # the engine runs every expert with expert 0's config


@dataclass(frozen=True)
class Extras:
    """FLOPs around the expert forwards, measured once per clip on the meta device."""

    router_per_request: int  # one router forward for one request (every request, every step)
    encode_per_text: int  # T5 and CLIP over one text (each request's prompt and negative prompt)


def measure_extras(folder: Path, shape: ClipShape) -> Extras:
    components = read_manifest(folder).components
    modules = {n: meta_module(c, folder / c.path) for n, c in components.named().items() if n in ("router", "t5", "clip")}

    def flops(run) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad(), torch.device("meta"):
            run()
        return counter.get_total_flops()

    return Extras(router_per_request=flops(lambda: router_forward(modules["router"], shape, 1)),
                  encode_per_text=flops(lambda: t5_encode(modules["t5"], shape, 1))
                  + flops(lambda: clip_encode(modules["clip"], components.clip.max_length or 77, 1)))


def component_of(nbytes: int):
    """A component of `nbytes` bf16 weights on the meta device (what the residency moves)."""
    def load():
        module = torch.nn.Module()
        module.weight = torch.nn.Parameter(torch.empty(nbytes // 2, dtype=torch.bfloat16, device="meta"), requires_grad=False)
        return module
    return load


def simulate(plan: Plan, requests: int, passes: Passes, extras: Extras, flop_rate: float, stream_batch: int, build) -> dict:
    """The encoding and denoising of `requests` requests arriving together, tick by tick, on the
    residency the worker configures from its plan (see the module docstring)."""
    f = plan.footprint
    names = f.expert_names
    timeline = Timeline(flop_rate, H2D_BYTES_PER_S)
    residency = Residency("meta", **{**residency_settings(plan), "host_budget_bytes": HOST_MEMORY}, transfers=timeline)
    for name, nbytes in f.weights.items():
        residency.register(name, build if name in names else component_of(nbytes), nbytes)
    for name in (*names, "router", "vae", *(n for n in ("t5", "clip", "dinov2") if plan.placement[n] is Placement.RESIDENT)):
        residency.get(name)  # resident ones placed, streamed ones read to the host: a warm server
    for name, p in plan.placement.items():
        if p is Placement.ON_DEMAND:  # read to its host copy once (a server that has encoded before)
            residency.get(name)
            residency.evict(name)
    loads_before = dict(residency.stats.device_loads)
    timeline.compute_end = timeline.copy_end = 0.0
    moved = -residency.stats.bytes_to_device
    # the batch of new prompts: T5 and CLIP brought as the engine asks (on-demand ones copied in on
    # the compute stream), their FLOPs, then the on-demand encoders leave
    residency.get("t5")
    residency.get("clip")
    encode_flops = 2 * requests * extras.encode_per_text
    timeline._run("compute", encode_flops)
    for name, p in plan.placement.items():
        if p is Placement.ON_DEMAND:
            residency.evict(name)
    encode_s = timeline.compute_end
    scheduler = ExpertScheduler(MAX_WAIT, stream_batch=stream_batch)
    rng = random.Random(SEED)
    active = {f"r{i}": {"step": 0, "waited": 0, "expert": names[rng.randrange(len(names))]} for i in range(requests)}
    ticks = flops = router_flops = streamed_passes = streamed_rows = 0
    while active:
        tick = scheduler.schedule([RequestNeeds(j, frozenset({s["expert"]}), s["waited"]) for j, s in active.items()],
                                  residency)
        routed = sum(s["waited"] == 0 for s in active.values())  # a request that waits keeps its choice
        router_flops += routed * extras.router_per_request
        timeline._run("compute", routed * extras.router_per_request)
        for key in tick.expert_order:
            rows = ROWS_PER_REQUEST * sum(active[j]["expert"] == key for j in tick.advance)
            module = residency.get(key, tick.demand)
            if key in tick.prefetch:
                residency.prefetch(tick.prefetch[key], protect=set(tick.demand))
            for start in range(0, rows, plan.rows_per_forward):
                chunk = min(plan.rows_per_forward, rows - start)
                pass_flops, unseen = passes.run(residency, timeline, module, key in tick.streamed, chunk)
                flops += pass_flops
                moved += unseen
                if key in tick.streamed:
                    streamed_passes += 1
                    streamed_rows += chunk
        for job_id, s in list(active.items()):
            if job_id not in tick.advance:
                s["waited"] += 1
                continue
            s["step"], s["waited"] = s["step"] + 1, 0
            if s["step"] == STEPS:
                del active[job_id]
            else:
                s["expert"] = names[rng.randrange(len(names))]
        ticks += 1
    total_s = max(timeline.compute_end, timeline.copy_end)
    denoise_s = total_s - encode_s
    moved += residency.stats.bytes_to_device
    reloads = {n: residency.stats.device_loads.get(n, 0) - loads_before.get(n, 0) for n in names
               if plan.placement[n] is Placement.RESIDENT}
    decode_s = f.decode_flops / (PEAK_BF16 * DECODE_MFU)
    videos_s = total_s + requests * decode_s  # decoding is compute-bound: together or apart, same time
    compute_videos_s = (flops + router_flops + encode_flops) / flop_rate + requests * decode_s
    return {
        "stream_batch": stream_batch, "ticks": ticks, "flops": flops, "router_flops": router_flops,
        "encode_flops": encode_flops, "bytes_to_device": moved,
        "resident_expert_reloads": sum(reloads.values()),  # an expert evicted by an encoder and brought back
        "streamed_passes": streamed_passes,
        "rows_per_streamed_pass": round(streamed_rows / streamed_passes, 2) if streamed_passes else None,
        "encode_s": round(encode_s, 3), "denoise_s": round(denoise_s, 2),
        "compute_only_denoise_s": round((flops + router_flops) / flop_rate, 2),
        "denoise_ratio": round(denoise_s * flop_rate / (flops + router_flops), 4),
        "decode_s_per_video": round(decode_s, 3),
        "all_videos_s": round(videos_s, 2), "per_video_s": round(videos_s / requests, 2),
        "compute_only_all_videos_s": round(compute_videos_s, 2), "video_ratio": round(videos_s / compute_videos_s, 4),
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
    build = expert_builder(args.model)
    cases, targets = [], {}
    largest = measure_footprint(args.model, max_batch=max(REQUESTS))  # what the worker plans for
    for frames in (33,) if args.quick else FRAMES:
        footprint = measure_footprint(args.model, frames=frames, max_batch=max(REQUESTS))
        passes, extras = Passes(footprint.shape), measure_extras(args.model, footprint.shape)
        batch = stream_batch_for(footprint, flop_rate, H2D_BYTES_PER_S)
        for budget in BUDGETS_GIB:
            target = Target(budget * GiB, HOST_MEMORY, max_batch=max(REQUESTS))
            try:
                plan = make_plan(footprint, target)
                worker = make_plan(largest, target).stream_batch  # the worker's: planned at the largest clip
            except PlanRefused as exc:
                cases.append({"frames": frames, "budget_gib": budget, "refused": str(exc)})
                continue
            for requests in REQUESTS:
                predicted = simulate(plan, requests, passes, extras, flop_rate, worker, build)
                case = {"frames": frames, "budget_gib": budget, "requests": requests, "plan": plan_summary(plan),
                        "estimate": predicted}
                if plan.streamed and batch > worker and requests > 1:
                    case["estimate_gathering_streamed_rows"] = simulate(plan, requests, passes, extras, flop_rate, batch,
                                                                        build)
                cases.append(case)
                if frames == 129 and budget in TARGETS:
                    targets[f"129 frames, {budget} GiB, {requests} request(s)"] = {
                        "limit": TARGETS[budget], "estimate": predicted["video_ratio"],
                        "met": predicted["video_ratio"] <= TARGETS[budget]}
    result = {
        "kind": "estimate (the engine's scheduler, residency and expert forwards on the meta device, FLOP and byte "
                "counts x the constants below; not a measurement)",
        "constants": {"peak_bf16_flops": PEAK_BF16, "mfu": args.mfu, "decode_mfu": DECODE_MFU,
                      "h2d_bytes_per_s": H2D_BYTES_PER_S,
                      "steps": STEPS, "rows_per_request": ROWS_PER_REQUEST, "max_wait": MAX_WAIT,
                      "routing": f"top-1, uniform, seeded ({SEED})", "host_memory": HOST_MEMORY},
        "cases": cases, "targets": targets,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
