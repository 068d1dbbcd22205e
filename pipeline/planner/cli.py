"""`paris plan`: measure a model folder on the meta device and print the residency plan for a
device and host budget (a table, or `--json`); with `--devices`, the placement of the experts over
a worker group. `register` imports nothing heavy: `paris --help` must not load torch; the run
functions import what they need."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plan import Plan, Target


def register(sub) -> None:
    plan = sub.add_parser("plan", help="measure a model on the meta device and plan where its weights live")
    plan.add_argument("--model", type=Path, required=True, help="model folder (configs and safetensors headers are read)")
    plan.add_argument("--device-memory", help="device budget, e.g. 80GiB (default on CUDA: the free memory now); "
                      "with --devices, one for all or one per device: 80GiB,80GiB,48GiB")
    plan.add_argument("--devices", type=int, help="place the experts over a worker group of this many devices "
                      "(pipeline/planner/placement.py)")
    plan.add_argument("--stream-copies", action="store_true", help="with --devices: also stream, on each device, the "
                      "experts it does not hold whole (every request's guidance rows can then split; pays on long clips)")
    plan.add_argument("--host-memory", help="host budget for pinned copies (default: 90%% of this machine's RAM)")
    plan.add_argument("--reserve", help="device memory held back (default: 5%% of the device budget, at least 2GiB)")
    plan.add_argument("--max-batch", type=int, default=8, help="requests served at once")
    plan.add_argument("--size", help="WIDTHxHEIGHT (default: the largest the model allows)")
    plan.add_argument("--frames", type=int, help="frames per video (default: the most the model allows)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(run=run_plan)


def target_from_args(args) -> Target:
    import torch

    from .serving import budget_target

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    target = budget_target(device, args.device_memory, args.host_memory, args.reserve, args.max_batch)
    if target is None:
        raise ValueError("no CUDA device here: give the device budget with --device-memory (e.g. 80GiB)")
    return target


def group_targets(args) -> list[Target]:
    """One target per device: --device-memory is one size for all, or one per device."""
    sizes = (args.device_memory or "").split(",")
    if len(sizes) not in (1, args.devices):
        raise ValueError(f"--device-memory: {len(sizes)} sizes for {args.devices} devices (give one, or one each)")
    sizes = sizes * args.devices if len(sizes) == 1 else sizes
    targets = []
    for size in sizes:
        args.device_memory = size or None
        targets.append(target_from_args(args))
    return targets


def run_placement(args) -> int:
    from ..errors import ModelFolderError
    from .footprint import measure_footprint
    from .placement import place
    from .placement import table as placement_table

    try:
        if args.devices < 1:
            raise ValueError("--devices: at least 1")
        targets = group_targets(args)
        placement = place(measure_footprint(args.model, args.size, args.frames, args.max_batch), targets,
                          stream_copies=args.stream_copies)
    except (ValueError, ModelFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(placement.to_json(), indent=2) if args.json else placement_table(placement))
    return 0


def run_plan(args) -> int:
    from ..errors import ModelFolderError
    from .footprint import measure_footprint
    from .plan import make_plan

    if args.devices is not None:
        return run_placement(args)
    try:
        target = target_from_args(args)
        footprint = measure_footprint(args.model, args.size, args.frames, args.max_batch)
        plan = make_plan(footprint, target)
    except (ValueError, ModelFolderError) as exc:  # PlanRefused is a ValueError: its message names what does not fit
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_json(), indent=2) if args.json else table(plan))
    return 0


def where(plan: Plan, name: str) -> str:
    from .plan import Placement

    placement = plan.placement[name]
    if placement is Placement.STREAMED:
        return f"streamed block by block from pinned host memory ({plan.target.window_blocks}-block window)"
    if placement is Placement.ON_DEMAND:
        return "pinned host memory; on the device only while encoding"
    return "resident on the device"


def full_batches(plan: Plan) -> list[str]:
    """Per preset and kind of request, a full batch's device use at each phase's peak (with its
    allocator headroom) and the headroom the budget leaves the phase: every phase within budget."""
    from ..speed import PRESETS, Speed
    from .plan import gib

    f, t = plan.footprint, plan.target
    phases = list(plan.phases)
    rows = [f"full batches ({t.max_batch} requests, one expert a step): device in use at each phase's peak"
            f" / headroom the {gib(plan.budget)} budget leaves it",
            f"{'preset':<9}{'kind':<5}{'cached rows':>12}  " + "".join(f"{p:>26}" for p in phases)]
    kinds = [("t2v", 2), ("i2v", 3)][: 2 if f.rows_per_request == 3 else 1]
    for speed in Speed:
        for kind, per_request in kinds:
            b = plan.full_batch(PRESETS[speed].cache.enabled, per_request)
            cells = "".join(f"{gib(b['used'][p]) + ' / ' + gib(b['headroom'][p]):>26}" for p in phases)
            rows.append(f"{speed.value:<9}{kind:<5}{b['step_cache_rows']:>12}  {cells}")
    return rows


def table(plan: Plan) -> str:
    from .plan import gib

    f, t = plan.footprint, plan.target
    rows = [f"{f.model}: {f.shape.label}, up to {t.max_batch} requests at once",
            f"budget: device {gib(t.device_memory)} (reserve {gib(t.held_back)}), host {gib(t.host_memory)}", "",
            f"{'component':<10} {'bytes':>10}  {'from':<11} where"]
    rows += [f"{n:<10} {gib(f.weights[n]):>10}  {f.weight_sources[n]:<11} {where(plan, n)}" for n in plan.placement]
    peaks = ", ".join(f"{r} rows {gib(b)}" for r, b in plan.activation_peaks.items())
    rows += ["", f"expert forward activation peak: {peaks} (2 rows per text-to-video request, 3 per image-to-video)",
             f"rows per forward: {plan.rows_per_forward}; a streamed pass gathers {plan.stream_batch} request(s)"
             " (stream_batch, sized for an H100 at the plan's clip)",
             f"VAE decode peak: {gib(f.decode_peak)} per video; {plan.decodes_at_once} decoded at a time",
             f"embedding cache: {plan.cache_entries} texts",
             f"step cache: {plan.step_cache_rows} rows ({gib(plan.step_cache_bytes)}); a request whose rows do not fit"
             " computes every block",
             "phases (peak of each, weights brought in included; + allocator headroom; headroom the budget leaves it): "
             + ", ".join(f"{k} {gib(v)} + {gib(plan.phase_needs[k] - v)}; {gib(plan.phase_headroom[k])}"
                         for k, v in plan.phases.items()),
             f"encoders on demand may use {gib(plan.encoder_room)} of the largest phase's room while encoding", "",
             *full_batches(plan), "",
             f"device: resident weights {gib(plan.resident_bytes)} + streaming window {gib(plan.window_bytes)}"
             f" + embeddings {gib(plan.embedding_bytes)} + step cache {gib(plan.step_cache_bytes)}"
             f" + largest phase ({plan.largest_phase}) {gib(plan.phases[plan.largest_phase])}"
             f" + its headroom {gib(plan.phase_needs[plan.largest_phase] - plan.phases[plan.largest_phase])}"
             f" = {gib(plan.device_bytes)} of the {gib(plan.budget)} budget ({gib(t.device_memory)} less {gib(t.held_back)} reserve)",
             f"host: pinned copies + one component being read = {gib(plan.host_bytes)} of {gib(t.host_memory)}"]
    return "\n".join(rows)

