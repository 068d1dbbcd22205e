"""The commands that run no model start without torch, diffusers or transformers (issue 17: `paris
--help` took 10-15 s). Submitting and the job commands against a real server: tests/server/
test_job_commands.py."""

import pytest

from tests.support.paris_cli import paris

HELP = [["--help"], ["submit", "--help"], ["api", "--help"], ["serve", "--help"], ["worker", "--help"],
        ["status", "--help"], ["list", "--help"], ["cancel", "--help"], ["delete", "--help"],
        ["download", "--help"], ["events", "--help"], ["generate", "--help"], ["plan", "--help"],
        ["eval", "--help"], ["build-mini", "--help"]]


@pytest.mark.parametrize("argv", HELP, ids=" ".join)
def test_help_imports_no_heavy_library(argv, tmp_path):
    r = paris(*argv, watch_imports=tmp_path / "imports.json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: paris")
    assert r.heavy == [], f"paris {' '.join(argv)} imported {r.heavy}"


def test_the_watch_sees_a_heavy_import(tmp_path):
    """The check above can fail: a command that loads a model shows torch."""
    r = paris("weights", "verify", "weights/paris-mini", watch_imports=tmp_path / "imports.json")
    assert r.returncode == 0, r.stderr
    assert "torch" in r.heavy


def test_generate_rejects_a_bad_size_before_loading_anything(tmp_path):
    """The request is checked against the manifest first: one line, no progress bar, no torch."""
    r = paris("generate", "a red circle moving left", "--size", "64x64", "--out", str(tmp_path / "x.mp4"),
              watch_imports=tmp_path / "imports.json")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: size: size 64x64 is not supported; supported: 32x32"]
    assert r.heavy == [] and not (tmp_path / "x.mp4").exists()
