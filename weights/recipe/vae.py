"""Train a small diffusers AutoencoderKLHunyuanVideo on the synthetic clips.

32x32x9 clips -> 16 x 3 x 8 x 8 latents (x4 spatial, x4 temporal, causal: latent frame 0 is
frame 0 alone, which is what image-to-video conditions on). After training the config's
scaling_factor is set so that scaled latents have unit standard deviation.
"""

import numpy as np
import torch
from diffusers import AutoencoderKLHunyuanVideo
from tqdm import tqdm

from .common import cosine_lr, log_event, optimizer_step
from .data import make_clips, to_model_space

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    down_block_types=("HunyuanVideoDownBlock3D",) * 3,
    up_block_types=("HunyuanVideoUpBlock3D",) * 3,
    # Measured by overfitting 4 frames (300 Adam steps): (8, 16, 32) with 1 norm group and mid-block
    # attention reached 20.7 dB; 4 groups 22.8; no attention 23.1; all three changes 28.7 and rising.
    block_out_channels=(16, 32, 32),
    layers_per_block=1,
    norm_num_groups=4,
    spatial_compression_ratio=4,
    temporal_compression_ratio=4,
    mid_block_add_attention=False,
    scaling_factor=1.0,
)


def build_vae(seed: int, **overrides) -> AutoencoderKLHunyuanVideo:
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(**{**VAE_CONFIG, **overrides})
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return vae


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two [-1, 1] tensors, in dB."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) ** 2).mean().item()
    return 10 * np.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def _log_progress(vae, bar, history: list, step: int, steps: int, eval_every: int, event: str, evaluate) -> None:
    """Every 25 steps: the bar's loss and a JSON log line; every `eval_every` steps and at the end,
    `evaluate()`'s held-out numbers too (in eval mode)."""
    if step % 25 and step != steps - 1:
        return
    bar.set_postfix(loss=f"{np.mean(history[-25:]):.4f}")
    extra = {}
    if step % eval_every == 0 or step == steps - 1:
        vae.eval()
        extra = evaluate()
        vae.train()
    log_event(event, step=step, loss=np.mean(history[-25:]), **extra)


def _frames_psnr(vae, frames: torch.Tensor) -> dict:
    return {"psnr_frames": psnr(vae.decode(vae.encode(frames).latent_dist.mode()).sample, frames)}


def pretrain_on_frames(vae: AutoencoderKLHunyuanVideo, steps: int, batch: int, seed: int, lr: float = 1e-3,
                       progress: bool = True, eval_every: int = 250) -> dict:
    """Teach the autoencoder single frames first (plain MSE), a random frame of each clip.

    A small autoencoder of this data sits on an "output a dark blob" plateau (about 16 dB) for
    about 2000 steps before it learns to draw the shapes; single frames cost a ninth of a clip,
    so the plateau is crossed here. A lone frame takes the same spatial path as latent frame 0.
    """
    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    val = to_model_space(make_clips(32, seed + 999)[0])
    val = val[torch.arange(len(val)), :, torch.arange(len(val)) % val.shape[2]][:, :, None]
    torch.manual_seed(seed + 2)
    history = []
    bar = tqdm(range(steps), desc="vae frames", disable=not progress, mininterval=2)
    for step in bar:
        clips = to_model_space(make_clips(batch, seed * 1000 + 7 + step)[0])
        pick = torch.randint(clips.shape[2], (batch,))
        x = clips[torch.arange(batch), :, pick][:, :, None]
        loss = (vae.decode(vae.encode(x).latent_dist.mode()).sample - x).pow(2).mean()
        # Constant rate: when the plateau ends is not known in advance, so no schedule is tuned to it.
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
        _log_progress(vae, bar, history, step, steps, eval_every, "vae_frames_step", lambda: _frames_psnr(vae, val))
    vae.eval()
    with torch.no_grad():
        stats = {**_frames_psnr(vae, val), "loss_first": float(np.mean(history[:10])),
                 "loss_last": float(np.mean(history[-10:]))}
    log_event("vae_frames_done", **stats)
    return stats


def train_vae(vae: AutoencoderKLHunyuanVideo, steps: int, batch: int, seed: int, lr: float = 1e-3,
              l2_weight: float = 1e-4, latent_noise: float = 0.1, consistency_weight: float = 0.1,
              progress: bool = True, eval_every: int = 100) -> dict:
    """Train on whole clips (continuing `vae`), then set the config's scaling factor."""
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    rng_seed = seed * 1000 + 17
    val = to_model_space(make_clips(32, seed + 999)[0])
    history = []
    torch.manual_seed(seed + 1)
    bar = tqdm(range(steps), desc="vae", disable=not progress, mininterval=2)
    for step in bar:
        x = to_model_space(make_clips(batch, rng_seed + step)[0])
        z = vae.encode(x).latent_dist.mode()
        # Image-to-video encodes the first frame alone, but GroupNorm statistics span time, so
        # the clip's latent frame 0 and the lone frame's latent differ unless trained to agree:
        # the lone first frame is reconstructed too, and its latent pulled onto the clip's.
        z1 = vae.encode(x[:, :, :1]).latent_dist.mode()
        # Deterministic autoencoder with a little latent noise (so the decoder tolerates the
        # imperfect latents a sampler produces) and a small L2 pull keeping latents near 0.
        scale = z.detach().std()
        rec = vae.decode(z + latent_noise * scale * torch.randn_like(z)).sample
        rec1 = vae.decode(z1 + latent_noise * scale * torch.randn_like(z1)).sample
        # Plain MSE: an L1 term (median-seeking, so "black" wherever unsure) ended 2.2 dB lower
        # after 200 steps from the same pretrained frames.
        err, err1 = rec - x, rec1 - x[:, :, :1]
        # Frame 0 counts twice: image-to-video replays its latent exactly, so its quality shows.
        weights = torch.ones(x.shape[2])
        weights[0] = 2.0
        per_frame = err.pow(2).mean(dim=(0, 1, 3, 4))
        loss = (
            (per_frame * weights).sum() / weights.sum()
            + err1.pow(2).mean()
            + consistency_weight * (z1 - z[:, :, :1]).pow(2).mean() / scale.pow(2)
            + l2_weight * z.pow(2).mean()
        )
        optimizer_step(opt, loss, vae.parameters(), cosine_lr(step, steps, lr))
        history.append(loss.item())
        _log_progress(vae, bar, history, step, steps, eval_every, "vae_step",
                      lambda: {k: v for k, v in evaluate_vae(vae, val).items() if k.startswith("psnr")})
    vae.eval()
    stats = evaluate_vae(vae, val)
    stats["loss_first"], stats["loss_last"] = float(np.mean(history[:10])), float(np.mean(history[-10:]))
    vae.register_to_config(scaling_factor=stats["scaling_factor"])
    log_event("vae_done", **stats)
    return stats


@torch.no_grad()
def evaluate_vae(vae, x: torch.Tensor) -> dict:
    z = vae.encode(x).latent_dist.mode()
    rec = vae.decode(z).sample
    first = vae.decode(vae.encode(x[:, :, :1]).latent_dist.mode()).sample
    return {
        "psnr": psnr(rec, x),
        "psnr_frame0": psnr(rec[:, :, 0], x[:, :, 0]),
        "psnr_single_frame": psnr(first[:, :, 0], x[:, :, 0]),
        "latent_mean": float(z.mean()),
        "latent_std": float(z.std()),
        "scaling_factor": float(1.0 / z.std()),
    }


def refine_decoder(vae: AutoencoderKLHunyuanVideo, steps: int, batch: int, seed: int, lr: float = 1e-3,
                   latent_noise: float = 0.05, progress: bool = True) -> dict:
    """Train the decoder alone on the frozen encoder's latents.

    The encoder (so every cached latent, expert and router) is unchanged; only how latents are
    drawn improves. Each batch decodes both the clip latent and the image-to-video latent
    (latent frame 0 replaced by the lone first frame's latent, as the sampler does at the end).
    """
    for p in vae.encoder.parameters():
        p.requires_grad_(False)
    for p in vae.quant_conv.parameters():
        p.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    val = to_model_space(make_clips(32, seed + 999)[0])
    before = evaluate_vae(vae.eval(), val)
    torch.manual_seed(seed + 1)
    history = []
    bar = tqdm(range(steps), desc="vae decoder", disable=not progress, mininterval=2)
    for step in bar:
        x = to_model_space(make_clips(batch, seed * 1000 + 31 + step)[0])
        with torch.no_grad():
            vae.eval()
            z = vae.encode(x).latent_dist.mode()
            z1 = vae.encode(x[:, :, :1]).latent_dist.mode()
        vae.decoder.train()
        zi = torch.cat([z1, z[:, :, 1:]], dim=2)
        z_all = torch.cat([z, zi])
        target = torch.cat([x, x])
        rec = vae.decode(z_all + latent_noise * z.std() * torch.randn_like(z_all)).sample
        loss = (rec - target).pow(2).mean()
        optimizer_step(opt, loss, params, cosine_lr(step, steps, lr))
        history.append(loss.item())
        if step % 25 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{np.mean(history[-25:]):.4f}")
            log_event("vae_decoder_step", step=step, loss=np.mean(history[-25:]))
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(True)
    after = evaluate_vae(vae, val)
    stats = {"psnr_before": before["psnr"], "psnr": after["psnr"], "psnr_frame0": after["psnr_frame0"],
             "psnr_single_frame": after["psnr_single_frame"], "loss_first": float(np.mean(history[:10])),
             "loss_last": float(np.mean(history[-10:]))}
    log_event("vae_decoder_done", **stats)
    return stats
