"""Video outputs: MP4 (H.264, yuv420p), first-frame thumbnail, spritesheet."""

import math
from pathlib import Path

import numpy as np
from diffusers.utils import export_to_video
from PIL import Image


def write_mp4(frames: np.ndarray, fps: int, path: str | Path, quality: float = 9.0) -> Path:
    """uint8 (F, H, W, 3) -> H.264 yuv420p MP4 at `fps` (diffusers' helper over imageio-ffmpeg)."""
    path = Path(path)
    export_to_video([f.astype(np.float32) / 255.0 for f in frames], str(path), fps=fps, quality=quality, macro_block_size=2)
    return path


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

