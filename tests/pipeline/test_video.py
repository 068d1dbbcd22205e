"""An MP4 that could not be finished (a full disk, a crash) is an OSError, not a file that looks
written; so is one that cannot be written at all. The same frames always give the same bytes."""

import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from pipeline.video import check_mp4, write_mp4


def test_a_truncated_mp4_is_an_os_error_and_a_whole_one_passes(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    whole = write_mp4(frames, 8, tmp_path / "whole.mp4")
    check_mp4(whole)
    data = whole.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 8):
        part = tmp_path / f"part{cut}.mp4"
        part.write_bytes(data[:cut])
        with pytest.raises(OSError, match="incomplete"):
            check_mp4(part)


def test_an_unwritable_place_is_an_os_error_without_the_path(tmp_path):
    frames = np.zeros((5, 16, 16, 3), dtype=np.uint8)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")  # a path below a file cannot be created, even by root
    with pytest.raises(OSError) as caught:
        write_mp4(frames, 8, not_a_dir / "video.mp4")
    assert str(tmp_path) not in str(caught.value)


def _frames() -> np.ndarray:
    """Big enough that libx264 would use several threads if allowed (it caps threads by height)."""
    return np.random.default_rng(0).integers(0, 256, (17, 128, 128, 3), dtype=np.uint8)


def test_the_same_frames_give_the_same_bytes(tmp_path):
    frames = _frames()
    with ThreadPoolExecutor(3) as pool:  # side by side, as the worker's artifact writers encode
        paths = list(pool.map(lambda i: write_mp4(frames, 8, tmp_path / f"{i}.mp4"), range(6)))
    assert len({p.read_bytes() for p in paths}) == 1


ENCODE = """
import hashlib, sys
import numpy as np
from pipeline.video import write_mp4
frames = np.random.default_rng(0).integers(0, 256, (17, 128, 128, 3), dtype=np.uint8)
print(hashlib.sha256(write_mp4(frames, 8, sys.argv[1]).read_bytes()).hexdigest())
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs to compare an encode on one CPU with one on several")
def test_the_bytes_do_not_depend_on_the_cpus(tmp_path):
    """libx264 sizes its thread pool from the CPUs it may use: with its default threads, an
    encode pinned to one CPU and one on two made different files (before ENCODER_OPTIONS)."""
    repo = Path(__file__).resolve().parents[2]
    cpus = sorted(os.sched_getaffinity(0))
    digests = []
    for n, allowed in enumerate([cpus[:1], cpus]):
        p = subprocess.run([sys.executable, "-c", ENCODE, str(tmp_path / f"{n}.mp4")], cwd=repo, capture_output=True,
                           text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(repo)},
                           preexec_fn=lambda allowed=allowed: os.sched_setaffinity(0, allowed))
        assert p.returncode == 0, p.stderr
        digests.append(p.stdout.strip())
    assert digests[0] == digests[1]
    assert digests[0] == hashlib.sha256(write_mp4(_frames(), 8, tmp_path / "here.mp4").read_bytes()).hexdigest()
