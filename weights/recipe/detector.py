"""Read a clip (or an MP4) back and say what it shows: the object's colour and its motion.

Per frame the object is the set of pixels brighter than half of the frame's peak (so fades do
not change its area). Motion is judged from the first two vs the last two frames:
centroid shift (translation), log area ratio (scale), log peak-brightness ratio (fade), each
divided by the size of that change in the training data; the largest wins, its sign names the
direction.
"""

from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from .data import COLOURS, MIN_BRIGHTNESS, SIZE

# Typical magnitudes of each cue over a whole clip in the generator's data.
TYPICAL_SHIFT = 0.45 * SIZE
TYPICAL_LOG_AREA = 2.3
TYPICAL_LOG_BRIGHTNESS = float(np.log(1 / MIN_BRIGHTNESS))
MIN_SCORE = 0.3
MIN_PEAK = 24.0


@dataclass
class Detection:
    colour: str | None
    motion: str | None
    scores: dict
    cues: dict


def _frame_stats(frame: np.ndarray):
    f = frame.astype(np.float64)
    v = f.max(axis=-1)
    peak = float(np.sort(v.ravel())[-5:].mean())
    if peak < MIN_PEAK:
        return None
    mask = v > 0.5 * peak
    ys, xs = np.nonzero(mask)
    w = v[mask]
    return {
        "cx": float((xs * w).sum() / w.sum()),
        "cy": float((ys * w).sum() / w.sum()),
        "area": float(mask.sum()),
        "peak": peak,
        "rgb": f[mask].sum(axis=0),
    }


def _nearest_colour(rgb: np.ndarray) -> str | None:
    if rgb.max() <= 0:
        return None
    rgb = rgb / rgb.max()
    names = list(COLOURS)
    dist = [np.linalg.norm(rgb - np.asarray(COLOURS[n])) for n in names]
    return names[int(np.argmin(dist))]


def detect(frames: np.ndarray) -> Detection:
    """frames: uint8 (F, H, W, 3)."""
    stats = [_frame_stats(f) for f in frames]
    seen = [s for s in stats if s is not None]
    if len(seen) < 2:
        return Detection(None, None, {}, {"visible_frames": len(seen)})
    colour = _nearest_colour(sum(s["rgb"] for s in seen))
    head = [s for s in stats[:2] if s is not None] or seen[:1]
    tail = [s for s in stats[-2:] if s is not None] or seen[-1:]

    def mean(group, key):
        return float(np.mean([s[key] for s in group]))

    size = frames.shape[1]
    dx = (mean(tail, "cx") - mean(head, "cx")) * SIZE / size
    dy = (mean(tail, "cy") - mean(head, "cy")) * SIZE / size
    log_area = float(np.log(mean(tail, "area") / mean(head, "area")))
    log_bright = float(np.log(mean(tail, "peak") / mean(head, "peak")))
    # A frame where the object vanished counts as faded to the visibility floor.
    if stats[0] is None or stats[-1] is None:
        log_bright = float(np.log(MIN_PEAK / 255.0)) * (1 if stats[-1] is None else -1)
    scores = {
        "translation": max(abs(dx), abs(dy)) / TYPICAL_SHIFT,
        "scale": abs(log_area) / TYPICAL_LOG_AREA,
        "fade": abs(log_bright) / TYPICAL_LOG_BRIGHTNESS,
    }
    cluster = max(scores, key=scores.get)
    if scores[cluster] < MIN_SCORE:
        motion = None
    elif cluster == "translation":
        if abs(dx) >= abs(dy):
            motion = "moving right" if dx > 0 else "moving left"
        else:
            motion = "moving down" if dy > 0 else "moving up"
    elif cluster == "scale":
        motion = "growing" if log_area > 0 else "shrinking"
    else:
        motion = "fading in" if log_bright > 0 else "fading out"
    cues = {"dx": dx, "dy": dy, "log_area": log_area, "log_brightness": log_bright}
    return Detection(colour, motion, {k: round(v, 4) for k, v in scores.items()}, {k: round(v, 4) for k, v in cues.items()})


def read_mp4(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode an MP4 back to uint8 (F, H, W, 3) frames and its fps."""
    reader = imageio.get_reader(str(path), format="ffmpeg")
    try:
        fps = reader.get_meta_data()["fps"]
        return np.stack([frame for frame in reader]), fps
    finally:
        reader.close()


def detect_mp4(path: str | Path) -> Detection:
    frames, _ = read_mp4(path)
    return detect(frames)
