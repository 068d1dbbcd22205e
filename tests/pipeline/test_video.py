"""An MP4 that could not be finished (a full disk, a crash) is an OSError, not a file that looks
written; so is one that cannot be written at all."""

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
