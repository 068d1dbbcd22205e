"""`paris eval` (score a paris-mini style model) and `paris build-mini` (rebuild it). The arguments
live here, away from the torch-importing modules, so that `paris --help` stays light; the run
functions import the heavy modules only when called."""

import argparse
from pathlib import Path

from weights import DEFAULT_MODEL

from .profiles import PROFILES


def add_eval_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--json", type=Path, default=Path("paris-mini-eval.json"), help="where to write the report")
    ap.add_argument("--samples", type=Path, default=None, help="write a spritesheet PNG of some clips here")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--quick", action="store_true", help="a quarter of the prompts, one seed")
    ap.add_argument("--speed", default=None, help="speed preset: quality, balanced or fast (default: the model's)")
    ap.add_argument("--threads", type=int, default=2)


def add_build_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", type=Path, default=Path("weights/paris-mini"))
    ap.add_argument("--profile", default="full", choices=sorted(PROFILES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the main process (VAE, cache)")
    ap.add_argument("--workers", type=int, default=None, help="processes training experts/router side by side")
    ap.add_argument("--no-progress", action="store_true")
    for key, value in PROFILES["full"].items():
        ap.add_argument("--" + key.replace("_", "-"), type=type(value), default=None)


def run_eval(args) -> int:
    from .evaluate import run

    return run(args)


def run_build(args) -> int:
    from .build import run

    return run(args)


def register(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a paris-mini style model (t2v, i2v, router, specialization)")
    add_eval_arguments(ev)
    ev.set_defaults(run=run_eval)
    rebuild = sub.add_parser("build-mini", help="rebuild weights/paris-mini from scratch (about 55 min on 2 cores)")
    add_build_arguments(rebuild)
    rebuild.set_defaults(run=run_build)
