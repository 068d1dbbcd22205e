"""The `paris` command. Each area registers its own subcommands from its own module."""

import argparse
import sys

import pipeline.cli
import pipeline.planner.cli
import server.process.cli
import weights.recipe.cli
from client import submit
from weights import DEFAULT_MODEL

# Modules exposing `register(subparsers)`; each adds its subcommands with `set_defaults(run=...)`.
# pipeline.cli registers first, given the default model (the pipeline does not import weights/).
COMMAND_MODULES = [pipeline.planner.cli, server.process.cli, submit, weights.recipe.cli]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paris", description="Serve and run Paris 2.0 style DDM video models.")
    sub = parser.add_subparsers(dest="command", required=True)
    pipeline.cli.register(sub, DEFAULT_MODEL)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
