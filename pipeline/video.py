"""Video outputs: MP4 (H.264, yuv420p), first-frame thumbnail, spritesheet."""

import errno
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

# H.264 constant rate factor: 5 is what imageio-ffmpeg's quality 9 (our earlier writer) meant.
CRF = 5
# One encoder thread: libx264 sizes its thread pool from the CPUs it may use, and the pool shapes
# the bitstream, so the same frames made different files on different machines (or CPU affinities).
# One thread makes the bytes a function of the frames alone (tests/pipeline/test_video.py).
ENCODER_OPTIONS = {"crf": str(CRF), "threads": "1"}


def write_mp4(frames: np.ndarray, fps: int, path: str | Path) -> Path:
    """uint8 (F, H, W, 3) -> H.264 yuv420p MP4 at `fps`. Encoded in this process with PyAV's
    libx264: spawning an ffmpeg per video cost about 60 ms of CPU for a paris-mini clip (most of
    it process and codec start-up), as much as the engine's own work for that video."""
    path = Path(path)
    height, width = frames.shape[1:3]
    try:
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = dict(ENCODER_OPTIONS)
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(stream.encode())
    except av.FFmpegError as exc:  # a full or read-only disk arrives here: storage faults are OSErrors
        raise OSError(getattr(exc, "errno", None) or errno.EIO, f"could not write the MP4: {getattr(exc, 'strerror', None) or type(exc).__name__}") from exc
    check_mp4(path)
    return path


def check_mp4(path: Path) -> None:
    """Raise OSError unless the MP4 is whole: its top-level boxes tile the file and include the
    index (`moov`, which the muxer writes last), so a file cut short (a full disk, a crash) never
    passes for a written one."""
    boxes, at, end = set(), 0, path.stat().st_size
    with open(path, "rb") as f:
        while at + 8 <= end:
            f.seek(at)
            header = f.read(16)
            size, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if size == 1 and len(header) == 16:  # a 64-bit size follows the type
                size = int.from_bytes(header[8:16], "big")
            if size < 8:
                break
            boxes.add(kind)
            at += size
    if at != end or b"moov" not in boxes:
        raise OSError(errno.EIO, "the MP4 file is incomplete (ffmpeg could not finish writing it)")


def write_thumbnail(frames: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    Image.fromarray(frames[0]).save(path)
    return path


def spritesheet(frames: np.ndarray, max_frames: int = 16) -> Image.Image:
    """A grid of up to `max_frames` evenly spaced frames, as square as the count allows."""
    picks = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
    cols = math.ceil(math.sqrt(len(picks)))
    rows = math.ceil(len(picks) / cols)
    h, w = frames.shape[1:3]
    sheet = Image.new("RGB", (cols * w, rows * h))
    for n, i in enumerate(picks):
        sheet.paste(Image.fromarray(frames[i]), ((n % cols) * w, (n // cols) * h))
    return sheet


def write_spritesheet(frames: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    spritesheet(frames).save(path)
    return path

