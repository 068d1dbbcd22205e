"""`paris eval` (score a paris-mini style model) and `paris build-mini` (rebuild it)."""

from pathlib import Path


def register(sub) -> None:
    from . import evaluate

    ev = sub.add_parser("eval", help="evaluate a paris-mini style model (t2v, i2v, router, specialization)")
    evaluate.add_arguments(ev)
    ev.set_defaults(run=evaluate.run)

    build = sub.add_parser("build-mini", help="rebuild weights/paris-mini from scratch (about 40 min on 2 cores)")
    build.add_argument("--out", type=Path, default=Path("weights/paris-mini"))
    build.add_argument("--profile", default="full", choices=["full", "tiny"])
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--threads", type=int, default=1)
    build.set_defaults(run=_run_build)


def _run_build(args) -> int:
    from .build import build

    build(args.out, args.profile, args.seed, args.threads)
    return 0
