"""`paris generate` and `paris weights verify`."""

import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .errors import InvalidRequest, ModelFolderError
from .request import REQUEST_FIELDS
from .request_fields import RequestField, choices


def register(sub, default_model: Path) -> None:
    """`default_model` comes from the `paris` command, which knows where the weights live (the
    pipeline does not import them)."""
    gen = sub.add_parser("generate", help="generate one video locally (no server)")
    add_request_arguments(gen)
    gen.add_argument("--model", type=Path, default=default_model)
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--device-memory", help="device budget, e.g. 79GiB (default on CUDA: the free memory now; "
                     "on a CPU: no limit)")
    gen.add_argument("--host-memory", help="host budget for pinned copies (default: 90%% of this machine's RAM)")
    gen.add_argument("--reserve", help="device memory held back (default: 5%% of the device budget, at least 2GiB)")
    gen.set_defaults(run=run_generate)

    weights = sub.add_parser("weights", help="model folder tools")
    wsub = weights.add_subparsers(dest="weights_command", required=True)
    verify = wsub.add_parser("verify", help="check a model folder from safetensors headers alone")
    verify.add_argument("folder", type=Path)
    verify.set_defaults(run=run_verify)


def add_request_arguments(p) -> None:
    """The flags of one generation request, shared by `paris generate` and `paris submit` so that
    the two spell them alike: one per GenerationRequest field, as its `param` declares it."""
    for f in REQUEST_FIELDS:
        p.add_argument(f.flag, **_flag_options(f))
    p.add_argument("--out", type=Path, default=Path("out.mp4"))


def _flag_options(f: RequestField) -> dict:
    if not f.flag.startswith("-"):
        return {}  # positional: the prompt
    options: dict = {"help": f.help}
    if f.file:
        options["type"] = Path
    elif f.type is bool:
        options.update(action="store_true", default=None)  # None, not False: the model's default
    elif choices(f.type):
        options["choices"] = choices(f.type)
    elif f.type in (int, float):
        options["type"] = f.type
    return options  # str, and lists (comma-separated text, parsed by request_values)


def _dest(f: RequestField) -> str:
    return f.flag.lstrip("-").replace("-", "_")


def request_values(args) -> dict[str, object]:
    """The request's fields from the parsed flags, by field name (None: not given; a file field is
    still its path). ValueError, naming the flag, for a list that does not parse."""
    values = {}
    for f in REQUEST_FIELDS:
        value = getattr(args, _dest(f))
        if f.listed:
            try:
                value = f.parse(value) if value else None
            except ValueError as exc:
                raise ValueError(f"{f.flag}: {exc}") from None
        values[f.name] = value
    return values


def run_generate(args) -> int:
    from .manifest import read_manifest
    from .request import GenerationRequest, resolve

    try:
        values = request_values(args)
        path = values.pop("image")
        image = Image.open(path) if path else None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    request = GenerationRequest(**values, image=image)
    try:  # a bad request is told before the model loads (seconds) or a progress bar is drawn
        resolve(read_manifest(args.model), request)
    except InvalidRequest as exc:
        print(f"error: {exc.param}: {exc.message}", file=sys.stderr)
        return 2
    except ModelFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from .cuda_env import configure_process
    from .generate import GenerationFailed, generate
    from .loader import load_model, quiet_library_logging
    from .planner.plan import PlanRefused
    from .planner.serving import residency_settings
    from .vae_platform import UnsupportedPlatform, check_vae_platform
    from .video import write_mp4, write_spritesheet, write_thumbnail

    try:
        configure_process(args.device)  # before any CUDA call: the allocator's settings, and only this device
    except (RuntimeError, ValueError) as exc:
        print(f"error: --device: {exc}", file=sys.stderr)
        return 2
    quiet_library_logging()
    try:
        plan, limits = generation_plan(args, request)
        model = load_model(args.model, args.device, **residency_settings(plan))
        check_vae_platform(model.device, model.manifest.components.vae.dtype)
        with tqdm(desc="denoising", unit="step") as bar:
            def on_progress(step, total):
                bar.total = total
                bar.update(step - bar.n)
            result = generate(model, request, on_progress, limits)
    except InvalidRequest as exc:
        print(f"error: {exc.param}: {exc.message}", file=sys.stderr)
        return 2
    except (ModelFolderError, UnsupportedPlatform, GenerationFailed, PlanRefused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(result.frames, result.fps, args.out)
    thumb = write_thumbnail(result.frames, args.out.with_suffix(".png"))
    sheet = write_spritesheet(result.frames, args.out.with_name(args.out.stem + "_sheet.png"))
    names = [e.name or e.path for e in model.manifest.components.experts]
    share = result.routing
    print(f"wrote {args.out} ({len(result.frames)} frames, {result.request.size}, {result.fps} fps, seed {result.seed}), {thumb}, {sheet}")
    print("routing: " + ", ".join(f"{n} {s:.0%} of steps (weight {w:.2f})"
                                  for n, s, w in zip(names, share.step_share, share.weight_share)))
    print(f"expert work ({result.request.speed} preset): {result.compute.summary()}")
    return 0


def generation_plan(args, request):
    """The memory plan and engine limits one generation runs under, made as a worker makes its
    own (pipeline/planner/serving.py) for the request's size; printed as one line. No plan (and
    no limit) on a CPU given no --device-memory."""
    import torch

    from .engine import MemoryLimits
    from .manifest import read_manifest
    from .planner.plan import gib
    from .planner.serving import budget_target, check_free, generation_plan as plan_for, memory_limits
    from .request import resolve

    target = budget_target(torch.device(args.device), args.device_memory, args.host_memory, args.reserve, max_batch=1)
    if target is None:
        return None, MemoryLimits()
    check_free(target, torch.device(args.device))
    resolved = resolve(read_manifest(args.model), request)
    plan = plan_for(args.model, target, resolved.size, resolved.num_frames)
    print(f"memory plan: resident {', '.join(plan.resident) or 'nothing'}; streamed {', '.join(plan.streamed) or 'nothing'};"
          f" device {gib(plan.device_bytes)} of {gib(plan.budget)} ({gib(plan.budget - plan.device_bytes)} unused)")
    return plan, memory_limits(plan)


def run_verify(args) -> int:
    from .loader import quiet_library_logging
    from .verify import verify_model_folder

    quiet_library_logging()
    problems = verify_model_folder(args.folder)
    if problems:
        print(f"{args.folder}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(f"{args.folder}: ok")
    return 0
