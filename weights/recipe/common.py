"""Small helpers shared by the training stages: logging, timing, LR schedule."""

import json
import logging
import math
import time
from pathlib import Path

import torch

log = logging.getLogger("paris.recipe")


def setup_logging(path: Path | None = None) -> None:
    handlers = [logging.StreamHandler()]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", handlers=handlers, force=True)


def log_event(event: str, **fields) -> None:
    log.info(json.dumps({"event": event, **fields}, default=lambda v: round(float(v), 6)))


def cosine_lr(step: int, total: int, base: float, warmup: int | None = None, floor: float = 0.1) -> float:
    warmup = min(50, max(1, total // 10)) if warmup is None else warmup
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params, lr: float) -> None:
    """One update at learning rate `lr`, gradients clipped to norm 1."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.start, 2)
