"""Expert training: one MM-DiT per motion cluster, flow matching on cached latents.

Each expert sees only its own cluster's clips (the DDM recipe: experts never communicate).
Text dropout trains the unconditional branch for classifier-free guidance; first-frame
condition dropout makes one expert serve both text-to-video (cond = zeros) and image-to-video
(cond = mask 1 + reference latent on latent frame 0, 17 channels packed to 68 features).
"""

import copy

import numpy as np
import torch
from tqdm import tqdm

from pipeline.models.expert import MMDiT, MMDiTConfig, image_positions, pack
from pipeline.sampling import resolution_shift, shift_time

from .common import cosine_lr, log_event, optimizer_step
from .latents import LatentCache


def expert_config(text_dim: int, clip_dim: int, hidden: int = 96, heads: int = 4, depth: int = 2,
                  single: int = 2) -> MMDiTConfig:
    head_dim = hidden // heads
    t_axis = head_dim - 2 * (head_dim // 3 // 2 * 2)
    axes = [t_axis, head_dim // 3 // 2 * 2, head_dim // 3 // 2 * 2]
    return MMDiTConfig(
        in_channels=64, vec_in_dim=clip_dim, context_in_dim=text_dim, hidden_size=hidden, mlp_ratio=4.0,
        num_heads=heads, depth=depth, depth_single_blocks=single, axes_dim=axes, theta=10000, qkv_bias=True,
        guidance_embed=False, cond_embed=True, patch_size=2,
    )


def first_frame_cond(ref: torch.Tensor, present: torch.Tensor, t: int) -> torch.Tensor:
    """Packed i2v condition: [mask | reference latent] on latent frame 0 for rows where `present`,
    zeros elsewhere. ref (B, C, 1, h, w) -> (B, t * h/2 * w/2, (C + 1) * 4)."""
    b, c, _, h, w = ref.shape
    cond = torch.zeros(b, c + 1, t, h, w, dtype=ref.dtype)
    cond[:, 0, 0] = 1.0
    cond[:, 1:, 0] = ref[:, :, 0]
    cond = cond * present.to(ref.dtype)[:, None, None, None, None]
    return pack(cond, 2)


def sample_t(n: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """Half uniform, half logit-normal, then the same resolution shift the sampler uses."""
    u = torch.rand(n, generator=generator)
    ln = torch.sigmoid(torch.randn(n, generator=generator))
    pick = torch.rand(n, generator=generator) < 0.5
    return shift_time(torch.where(pick, u, ln), alpha).clamp(1e-4, 1.0)


def flow_loss(model, x0, txt, yvec, cond, t, noise):
    b, c, tt, h, w = x0.shape
    xt = t[:, None, None, None, None] * noise + (1 - t[:, None, None, None, None]) * x0
    img_ids = image_positions(tt, h, w, 2)[None].expand(b, -1, -1)
    txt_ids = torch.zeros(b, txt.shape[1], 3, dtype=torch.long)
    pred = model(pack(xt, 2), img_ids, txt, txt_ids, t, yvec, cond)
    return torch.nn.functional.mse_loss(pred, pack(noise - x0, 2))


def train_expert(cache: LatentCache, cluster: int, config: MMDiTConfig, steps: int, batch: int, seed: int,
                 lr: float = 1e-3, text_drop: float = 0.1, cond_keep: float = 0.5, ema_decay: float = 0.995,
                 progress: bool = True, name: str = "expert", position: int = 0) -> tuple[MMDiT, dict]:
    data = cache.subset(cluster)
    torch.manual_seed(seed)
    model = MMDiT(config)
    model.train()
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    _, _, tt, h, w = data.latents.shape
    alpha = resolution_shift((h // 2) * (w // 2), tt)
    history = []
    bar = tqdm(range(steps), desc=name, disable=not progress, mininterval=2, position=position)
    for step in bar:
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        x0 = data.latents[idx]
        pidx = data.prompt_index[idx]
        pidx = torch.where(torch.rand(batch, generator=gen) < text_drop, torch.zeros_like(pidx), pidx)
        cond = first_frame_cond(data.ref_latents[idx], torch.rand(batch, generator=gen) < cond_keep, x0.shape[2])
        t = sample_t(batch, alpha, gen)
        noise = torch.randn(x0.shape, generator=gen)
        loss = flow_loss(model, x0, cache.t5[pidx], cache.clip[pidx], cond, t, noise)
        optimizer_step(opt, loss, model.parameters(), cosine_lr(step, steps, lr))
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        history.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{np.mean(history[-50:]):.4f}")
            log_event(f"{name}_step", step=step, loss=np.mean(history[-50:]))
    stats = {"loss_first": float(np.mean(history[:20])), "loss_last": float(np.mean(history[-50:])),
             "clips": len(data)}
    log_event(f"{name}_done", **stats)
    return ema, stats
