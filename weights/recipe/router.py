"""Router training: a cluster classifier on noisy latents at sampled timesteps.

Inputs as at inference: the noisy latent x_t, t, the pooled CLIP vector of the prompt and,
for half the samples (as when a first frame is given), the DINOv2 feature; otherwise the
router's learned null image vector stands in.
"""

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.models.router import DiTRouter, RouterConfig

from .common import cosine_lr, log_event, optimizer_step
from .latents import LatentCache


def router_config(clip_dim: int, dino_dim: int, num_experts: int = 3, hidden: int = 64, depth: int = 2,
                  heads: int = 4) -> RouterConfig:
    return RouterConfig(num_experts=num_experts, in_channels=16, patch_size=2, hidden_size=hidden, depth=depth,
                        num_heads=heads, mlp_ratio=4.0, vec_in_dim=clip_dim, image_feature_dim=dino_dim)


def noisy(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    tt = t[:, None, None, None, None]
    return tt * noise + (1 - tt) * x0


def train_router(cache: LatentCache, config: RouterConfig, steps: int, batch: int, seed: int, lr: float = 1e-3,
                 text_drop: float = 0.05, image_keep: float = 0.5, progress: bool = True,
                 position: int = 0) -> tuple[DiTRouter, dict]:
    torch.manual_seed(seed)
    model = DiTRouter(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    history, correct = [], []
    bar = tqdm(range(steps), desc="router", disable=not progress, mininterval=2, position=position)
    for step in bar:
        idx = torch.randint(0, len(cache), (batch,), generator=gen)
        x0, label = cache.latents[idx], cache.cluster[idx]
        pidx = cache.prompt_index[idx]
        pidx = torch.where(torch.rand(batch, generator=gen) < text_drop, torch.zeros_like(pidx), pidx)
        t = torch.rand(batch, generator=gen)
        xt = noisy(x0, t, torch.randn(x0.shape, generator=gen))
        has_image = torch.rand(batch, generator=gen) < image_keep
        logits = model(xt, t, cache.clip[pidx], cache.image_feature[idx], has_image)
        loss = F.cross_entropy(logits, label)
        optimizer_step(opt, loss, model.parameters(), cosine_lr(step, steps, lr))
        history.append(loss.item())
        correct.append((logits.argmax(-1) == label).float().mean().item())
        if step % 50 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{np.mean(history[-50:]):.4f}", acc=f"{np.mean(correct[-50:]):.3f}")
            log_event("router_step", step=step, loss=np.mean(history[-50:]), acc=np.mean(correct[-50:]))
    model.eval()
    stats = {"loss_first": float(np.mean(history[:20])), "loss_last": float(np.mean(history[-50:])),
             "train_acc_last": float(np.mean(correct[-50:]))}
    log_event("router_done", **stats)
    return model, stats


@torch.no_grad()
def router_accuracy(model: DiTRouter, cache: LatentCache, levels=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
                    seed: int = 1234, with_image: bool = False) -> dict[float, float]:
    """Top-1 cluster accuracy at fixed noise levels (t = 1 is pure noise)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    n = len(cache)
    for level in levels:
        t = torch.full((n,), float(level))
        xt = noisy(cache.latents, t, torch.randn(cache.latents.shape, generator=gen))
        has = torch.full((n,), with_image)
        logits = model(xt, t, cache.clip[cache.prompt_index], cache.image_feature, has)
        out[level] = float((logits.argmax(-1) == cache.cluster).float().mean())
    return out
