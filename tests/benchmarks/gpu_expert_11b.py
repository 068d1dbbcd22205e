"""Real-size expert on a GPU, the first script a GPU session runs (random bf16 weights, no
download). Needs CUDA, ~45 GB of GPU memory and ~70 GB of host memory.

Measures, through the engine's own residency manager (pipeline/residency):
- versions: torch, CUDA, cuDNN, the GPU;
- the 11B MM-DiT's forward at 256x256 for 129 and 33 frames (33 and 9 latent frames, 512 text
  tokens) at 2 rows (one text-to-video request) and 16 rows (eight), resident on the device,
  with its peak memory; attention is pinned to cuDNN or flash (`sdpa_kernel`), so a fallback to
  a slow kernel raises instead of running;
- host-to-device copies from the pinned slab: one double-stream block, one single-stream block,
  the whole expert;
- the same forwards with the expert streamed block by block through a 3-block window, against
  the resident ones, and the bytes each streamed forward moved;
- the VAE decode peak of one 129-frame video (torch.cuda.max_memory_allocated around one decode).
Prints one JSON object. Run: python -m tests.benchmarks.gpu_expert_11b
`--tiny` runs the same code on a tiny config, on the CPU when there is no GPU: the CI smoke test
of this script (its timings mean nothing).
"""

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLHunyuanVideo
from torch.nn.attention import SDPBackend, sdpa_kernel

from pipeline.encoders import configure_vae_decoding, vae_decode
from pipeline.models.expert import MMDiT, MMDiTConfig, image_positions
from pipeline.residency import Residency
from weights.recipe.vae import build_vae

PARIS_2_VAE = Path(__file__).resolve().parents[2] / "weights" / "paris-2" / "vae"
ATTENTION = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]
WINDOW = 3  # the plan's streaming window
ROWS = (2, 16)
RUNS = 2  # timed runs after one warm-up; the best is reported


@dataclass(frozen=True)
class Shape:
    config: MMDiTConfig
    frames: dict[int, int]  # video frames -> latent frames
    latent_size: int
    text_tokens: int


FULL = Shape(MMDiTConfig(), {129: 33, 33: 9}, latent_size=32, text_tokens=512)
TINY = Shape(MMDiTConfig(vec_in_dim=16, context_in_dim=32, hidden_size=64, num_heads=2, depth=2, depth_single_blocks=2,
                         axes_dim=[8, 12, 12]), {9: 3, 5: 2}, latent_size=8, text_tokens=8)


def random_expert(seed: int, config: MMDiTConfig, device: torch.device) -> MMDiT:
    """Random bf16 weights drawn on `device` (fast on a GPU), handed over in host memory as the
    loader hands a component to the residency manager."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = MMDiT(config)
    model = model.to_empty(device=device).to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model.cpu().eval()


def random_vae(tiny: bool, device: torch.device):
    if tiny:
        vae = build_vae(seed=0, block_out_channels=(8, 16, 16))
    else:
        with torch.device(device):
            vae = AutoencoderKLHunyuanVideo.from_config(AutoencoderKLHunyuanVideo.load_config(PARIS_2_VAE))
    configure_vae_decoding(vae)
    return vae.to(device, torch.bfloat16 if device.type == "cuda" else torch.float32).eval()


def step_inputs(device: torch.device, shape: Shape, latent_frames: int, rows: int) -> dict:
    config, h = shape.config, shape.latent_size
    n = latent_frames * (h // config.patch_size) ** 2
    g = torch.Generator(device=device).manual_seed(0)
    bf = torch.bfloat16
    return dict(
        img=torch.randn(rows, n, config.in_channels, device=device, dtype=bf, generator=g),
        img_ids=image_positions(latent_frames, h, h, config.patch_size)[None].expand(rows, -1, -1).to(device),
        txt=torch.randn(rows, shape.text_tokens, config.context_in_dim, device=device, dtype=bf, generator=g),
        txt_ids=torch.zeros(rows, shape.text_tokens, 3, device=device),
        timesteps=torch.full((rows,), 0.7, device=device),
        y_vec=torch.randn(rows, config.vec_in_dim, device=device, dtype=bf, generator=g),
        cond=torch.zeros(rows, n, config.in_channels + config.patch_size**2, device=device, dtype=bf),
    )


def timed(fn, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def best_of(fn, device: torch.device, runs: int = RUNS) -> float:
    fn()  # warm-up: kernel choice, allocator
    return min(timed(fn, device) for _ in range(runs))


def copy_seconds(residency: Residency, name: str, unit, device: torch.device) -> dict:
    """One unit of the slab to the device on the side stream, waited for on the compute stream."""
    slab, transfers = residency.host_copy(name), residency.transfers

    def copy():
        transfers.wait(transfers.ahead([(transfers.alloc(unit.nbytes), slab.unit(unit))]))

    seconds = best_of(copy, device, runs=3)
    return {"bytes": unit.nbytes, "seconds": round(seconds, 5), "gb_per_s": round(unit.nbytes / seconds / 1e9, 1)}


def gib(n: int) -> float:
    return round(n / 2**30, 2)


def versions(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "device": torch.cuda.get_device_name(device) if cuda else "cpu"}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny config; CPU allowed (smoke test)")
    args = parser.parse_args(argv)
    shape = TINY if args.tiny else FULL
    assert args.tiny or torch.cuda.is_available(), "needs a CUDA GPU (or --tiny)"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    result = {"versions": versions(device), "config": "tiny" if args.tiny else "11B",
              "attention_backends": [b.name for b in ATTENTION]}
    print(json.dumps(result["versions"]), flush=True)  # first, in case what follows fails

    t0 = time.perf_counter()
    resident = Residency(device)
    streamed = Residency(device, streamed={"expert": WINDOW})
    for residency, seed in ((resident, 0), (streamed, 1)):
        residency.register("expert", lambda seed=seed: random_expert(seed, shape.config, device), 0)
    with torch.inference_mode():
        expert = resident.get("expert")
        streaming = streamed.get("expert")  # read to its pinned slab
    slab = streamed.host_copy("expert")
    result |= {"expert_gib": gib(slab.layout.raw_bytes), "slab_over_raw": round(slab.nbytes / slab.layout.raw_bytes, 6),
               "init_seconds": round(time.perf_counter() - t0, 1)}

    units = slab.layout.units
    result["copies"] = {"double_block": copy_seconds(streamed, "expert", units[1], device),
                        "single_block": copy_seconds(streamed, "expert", units[1 + shape.config.depth], device)}

    def reload():
        resident.evict("expert")
        resident.get("expert")

    with torch.inference_mode():
        whole = best_of(reload, device)
    result["copies"]["expert"] = {"bytes": slab.nbytes, "seconds": round(whole, 4), "gb_per_s": round(slab.nbytes / whole / 1e9, 1)}

    cases = []
    with torch.inference_mode(), sdpa_kernel(ATTENTION):
        for frames, latent_frames in shape.frames.items():
            for rows in ROWS:
                inputs = step_inputs(device, shape, latent_frames, rows)
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                resident_s = best_of(lambda: expert(**inputs), device)
                peak = torch.cuda.max_memory_allocated(device) if cuda else None
                before = streamed.stats.bytes_streamed
                streamed_s = best_of(lambda: streaming(**inputs), device)
                cases.append({"frames": frames, "latent_frames": latent_frames, "rows": rows,
                              "resident_s": round(resident_s, 4), "streamed_s": round(streamed_s, 4),
                              "streamed_over_resident": round(streamed_s / resident_s, 3),
                              "bytes_streamed_per_forward": (streamed.stats.bytes_streamed - before) // (1 + RUNS),
                              "peak_gib_resident": None if peak is None else gib(peak)})
                del inputs
    result["cases"] = cases

    resident.evict("expert")  # room for the decode
    del expert, streaming
    vae = random_vae(args.tiny, device)
    frames, latent_frames = next(iter(shape.frames.items()))
    latents = torch.randn(1, vae.config.latent_channels, latent_frames, shape.latent_size, shape.latent_size, device=device)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device) if cuda else 0
    try:
        with torch.inference_mode():
            decode = {"seconds": round(timed(lambda: vae_decode(vae, latents), device), 3)}
    except torch.OutOfMemoryError as exc:  # what a cuDNN without bf16 Conv3d does (gpu-readiness B6): report it
        decode = {"error": str(exc).splitlines()[0]}
    peak = gib(torch.cuda.max_memory_allocated(device) - start) if cuda else None
    result["vae_decode"] = {"frames": frames, **decode, "peak_gib": peak}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
