"""Latent cache: clips of each cluster VAE-encoded once, with their text and first-frame features.

Everything the expert and router stages read comes from here, so the VAE and the frozen
encoders run once per clip. The encodings are the inference pipeline's own functions.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from .data import CLUSTERS, make_clips, to_model_space


@dataclass
class LatentCache:
    latents: torch.Tensor  # (N, 16, T, h, w), scaled
    ref_latents: torch.Tensor  # (N, 16, 1, h, w), scaled: frame 0 encoded alone, as image-to-video does
    cluster: torch.Tensor  # (N,) int64
    prompt_index: torch.Tensor  # (N,) int64 into `prompts`
    image_feature: torch.Tensor  # (N, dino_dim) DINOv2 pooled feature of frame 0
    prompts: list[str]  # prompts[0] is "" (the null prompt)
    t5: torch.Tensor  # (P, L, d)
    clip: torch.Tensor  # (P, d)

    def subset(self, cluster: int) -> "LatentCache":
        keep = self.cluster == cluster
        return LatentCache(self.latents[keep], self.ref_latents[keep], self.cluster[keep], self.prompt_index[keep], self.image_feature[keep],
                           self.prompts, self.t5, self.clip)

    def __len__(self) -> int:
        return len(self.latents)

    def save(self, path: Path) -> None:
        tensors = {k: getattr(self, k).contiguous() for k in TENSORS}
        save_file(tensors, str(path), metadata={"prompts": json.dumps(self.prompts)})

    @classmethod
    def load(cls, path: Path) -> "LatentCache":
        with safe_open(str(path), "pt") as f:
            prompts = json.loads(f.metadata()["prompts"])
            return cls(**{k: f.get_tensor(k) for k in TENSORS}, prompts=prompts)


TENSORS = ("latents", "ref_latents", "cluster", "prompt_index", "image_feature", "t5", "clip")


@torch.no_grad()
def encode_clips(vae, clips: np.ndarray, batch: int = 64) -> torch.Tensor:
    out = []
    for i in range(0, len(clips), batch):
        x = to_model_space(clips[i : i + batch])
        out.append(vae.encode(x).latent_dist.mode() * vae.config.scaling_factor)
    return torch.cat(out)


@torch.no_grad()
def build_cache(vae, encoders, per_cluster: int, seed: int, progress: bool = True, batch: int = 64) -> LatentCache:
    from PIL import Image

    from pipeline.encoders import vae_encode_frame

    latents, refs, clusters, prompt_idx, features = [], [], [], [], []
    prompts = [""]
    lookup = {"": 0}
    for c, name in enumerate(CLUSTERS):
        clips, specs = make_clips(per_cluster, seed * 100 + c, cluster=name)
        for i in tqdm(range(0, per_cluster, batch), desc=f"cache {name}", disable=not progress, mininterval=2):
            latents.append(encode_clips(vae, clips[i : i + batch], batch))
            refs.append(vae_encode_frame(vae, [Image.fromarray(f) for f in clips[i : i + batch, 0]]))
            features.append(encoders.image(clips[i : i + batch, 0]))
        for sp in specs:
            if sp.prompt not in lookup:
                lookup[sp.prompt] = len(prompts)
                prompts.append(sp.prompt)
            prompt_idx.append(lookup[sp.prompt])
        clusters += [c] * per_cluster
    t5, clip = encoders.text(prompts)
    return LatentCache(torch.cat(latents), torch.cat(refs), torch.tensor(clusters), torch.tensor(prompt_idx), torch.cat(features),
                       prompts, t5, clip)
