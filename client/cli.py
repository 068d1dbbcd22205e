"""The `paris` command. Each area registers its own subcommands from its own module. Registering
imports nothing heavy (no torch, diffusers or transformers: tests/test_light_cli.py): commands
that run a model import it in their run functions, so `paris --help`, `paris submit` and the job
commands start in a fraction of a second."""

import argparse
import os
import sys

import pipeline.cli
import pipeline.planner.cli
import server.process.cli
import weights.recipe.cli
from client import jobs, submit
from weights import DEFAULT_MODEL

# Modules exposing `register(subparsers)`; each adds its subcommands with `set_defaults(run=...)`.
# pipeline.cli registers first, given the default model (the pipeline does not import weights/).
COMMAND_MODULES = [pipeline.planner.cli, server.process.cli, submit, jobs, weights.recipe.cli]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paris", description="Serve and run Paris 2.0 style DDM video models.")
    sub = parser.add_subparsers(dest="command", required=True)
    pipeline.cli.register(sub, DEFAULT_MODEL)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The libraries' notices (e.g. transformers' "BitImageProcessor requires torchvision" when it
    # falls back to its PIL processor) are not for our users: errors only, in this process and the
    # workers it starts, set before anything imports them. The environment can still override.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
