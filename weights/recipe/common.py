"""Small helpers shared by the training stages: logging, seeding, safetensors I/O, LR schedule."""

import json
import logging
import math
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def save_module(module: torch.nn.Module, config, folder: Path) -> None:
    """config.json (dataclass fields) + model.safetensors (contiguous fp32 state dict)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = asdict(config) if is_dataclass(config) else dict(config)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    state = {k: v.detach().float().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.start, 2)
