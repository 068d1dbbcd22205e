"""Video outputs: MP4 (H.264, yuv420p), first-frame thumbnail, spritesheet."""

import errno
import math
import os
from pathlib import Path

import numpy as np
from diffusers.utils import export_to_video
from PIL import Image

# imageio starts ffmpeg with a preexec_fn (its own process group, away from Ctrl-C), which makes
# Python fork() instead of vfork(): in a large process (a worker with its model loaded) that fork
# marks every page copy-on-write, and the engine thread then pays for it (about a third more CPU
# per job on paris-mini). ffmpeg in our process group dies with us on Ctrl-C, which is what we want.
os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")


def write_mp4(frames: np.ndarray, fps: int, path: str | Path, quality: float = 9.0) -> Path:
    """uint8 (F, H, W, 3) -> H.264 yuv420p MP4 at `fps` (diffusers' helper over imageio-ffmpeg)."""
    path = Path(path)
    export_to_video([f.astype(np.float32) / 255.0 for f in frames], str(path), fps=fps, quality=quality, macro_block_size=2)
    check_mp4(path)
    return path


def check_mp4(path: Path) -> None:
    """Raise OSError unless the MP4 is whole: its top-level boxes tile the file and include the
    index (`moov`, which ffmpeg writes last). imageio does not report ffmpeg's exit status, so a
    full disk would otherwise leave a truncated file that looks written."""
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

