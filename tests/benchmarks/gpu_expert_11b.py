"""Real-size expert on a GPU (random bf16 weights, no download). Needs CUDA and ~60 GB of GPU
memory (two 11B experts resident during the prefetch measurement) and ~60 GB of host memory.

Measures, with our own Residency manager:
- per-step time of the 11B MM-DiT at 256x256, 129 frames (33 latent frames, 8448 image tokens
  + 512 text tokens), one text-to-video step = one forward of batch 2 (CFG branches together);
- host-to-device load time of one expert from pinned host memory;
- how much of that load the side-stream prefetch hides behind another expert's step.
Prints one JSON object. Run: python -m tests.benchmarks.gpu_expert_11b
`--tiny` runs the same code on a tiny config, on the CPU when there is no GPU: the CI smoke test
of this script (its timings mean nothing).
"""

import argparse
import json
import time

import torch

from pipeline.models.expert import MMDiT, MMDiTConfig, image_positions
from pipeline.residency import Residency

# The 11B expert's shapes: 256x256 -> 32x32 latents, 129 frames -> 33 latent frames, 512 T5 tokens.
FULL = dict(config=MMDiTConfig(), frames=33, latent_size=32, text_tokens=512)  # one step: "256x256, 129 frames"
TINY = dict(config=MMDiTConfig(vec_in_dim=16, context_in_dim=32, hidden_size=64, num_heads=2, depth=1,
                               depth_single_blocks=1, axes_dim=[8, 12, 12]),
            frames=3, latent_size=8, text_tokens=8)


def random_expert(seed: int, config: MMDiTConfig) -> MMDiT:
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = MMDiT(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model.eval()


def step_inputs(device, config: MMDiTConfig, frames: int, latent_size: int, text_tokens: int, batch=2):
    t, h = frames, latent_size
    n = t * (h // 2) ** 2
    g = torch.Generator(device=device).manual_seed(0)
    bf = torch.bfloat16
    return dict(
        img=torch.randn(batch, n, config.in_channels, device=device, dtype=bf, generator=g),
        img_ids=image_positions(t, h, h)[None].expand(batch, -1, -1).to(device),
        txt=torch.randn(batch, text_tokens, config.context_in_dim, device=device, dtype=bf, generator=g),
        txt_ids=torch.zeros(batch, text_tokens, 3, device=device),
        timesteps=torch.full((batch,), 0.7, device=device),
        y_vec=torch.randn(batch, config.vec_in_dim, device=device, dtype=bf, generator=g),
        cond=torch.zeros(batch, n, config.in_channels + 4, device=device, dtype=bf),
    )


def timed(fn, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny config; CPU allowed (smoke test)")
    args = parser.parse_args(argv)
    shape = TINY if args.tiny else FULL
    assert args.tiny or torch.cuda.is_available(), "needs a CUDA GPU (or --tiny)"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    experts = {f"expert_{i}": random_expert(i, shape["config"]) for i in range(2)}
    nbytes = sum(p.numel() * p.element_size() for p in experts["expert_0"].parameters())
    build_s = time.perf_counter() - t0

    residency = Residency(device, budget_bytes=int(nbytes * 2.2))
    for name, module in experts.items():
        residency.register(name, lambda m=module: m, nbytes)
    inputs = step_inputs(device, **shape)

    with torch.inference_mode():
        # host (pinned) -> device, measured twice: the first includes pinning the host copy
        first_s = timed(lambda: residency.get("expert_0"), device)
        residency.evict("expert_0")
        load_s = timed(lambda: residency.get("expert_0"), device)
        a = residency.get("expert_0")
        for _ in range(2):
            a(**inputs)  # warm-up (kernel selection)
        step_s = min(timed(lambda: a(**inputs), device) for _ in range(3))

        # serial: load B, then a step of A; overlapped: prefetch B on the side stream during A's step
        residency.get("expert_1")
        residency.evict("expert_1")
        serial_s = timed(lambda: (residency.get("expert_1"), a(**inputs)), device)
        residency.evict("expert_1")

        def overlapped():
            residency.prefetch("expert_1", protect={"expert_0"})
            a(**inputs)
            residency.get("expert_1")

        overlap_s = timed(overlapped, device)

    hidden = max(0.0, min(1.0, (serial_s - overlap_s) / load_s))
    cuda = device.type == "cuda"
    result = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "config": "tiny" if args.tiny else "11B",
        "expert_params_b": round(nbytes / 2 / 1e9, 3),
        "expert_gib_bf16": round(nbytes / 2**30, 2), "random_init_seconds": round(build_s, 1),
        "latent_frames_x_size": f"{shape['frames']} x {shape['latent_size']}x{shape['latent_size']}",
        "step_seconds_cfg_batch2": round(step_s, 4),
        "h2d_load_seconds_pinned": round(load_s, 4), "h2d_gb_per_s": round(nbytes / max(load_s, 1e-9) / 1e9, 1),
        "first_load_seconds_incl_pinning": round(first_s, 3),
        "serial_load_plus_step_seconds": round(serial_s, 3), "prefetch_overlapped_seconds": round(overlap_s, 3),
        "share_of_load_hidden_by_prefetch": round(hidden, 3),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
        "prefetches": residency.stats.prefetches, "device_loads": dict(residency.stats.device_loads),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
