"""An MP4 that ffmpeg could not finish (a full disk; imageio does not report its exit status)
is an OSError, not a file that looks written."""

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
