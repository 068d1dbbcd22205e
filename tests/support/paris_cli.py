"""Running the `paris` command in a subprocess, as a user does, and seeing which heavy libraries
it imported on the way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "transformers")

# `python -m client.cli ARGS`, then (even on SystemExit) the heavy modules it loaded, written to a file
_WATCHED = f"""
import json, os, sys
from client.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
finally:
    with open(os.environ["PARIS_TEST_IMPORTS"], "w") as f:
        json.dump(sorted(m for m in {HEAVY!r} if m in sys.modules), f)
sys.exit(code)
"""


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    heavy: list[str] | None  # heavy modules imported (None when not watched)


def paris(*argv: str, watch_imports: Path | None = None, env: dict | None = None, timeout: float = 120) -> Result:
    """Run `paris ARGV`; with `watch_imports` (a scratch file path), also report the heavy modules
    it imported."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    if watch_imports is not None:
        full_env["PARIS_TEST_IMPORTS"] = str(watch_imports)
        cmd = [sys.executable, "-c", _WATCHED, *argv]
    else:
        cmd = [sys.executable, "-m", "client.cli", *argv]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)
    heavy = json.loads(watch_imports.read_text()) if watch_imports is not None else None
    return Result(p.returncode, p.stdout, p.stderr, heavy)
