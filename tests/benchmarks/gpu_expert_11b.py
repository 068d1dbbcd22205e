"""The one command a GPU run starts with: Paris 2.0's 11B expert and VAE at real size, random bf16
weights (no download, no network), measured through the engine's own code, against the memory
plan. Needs CUDA, ~75 GB of GPU memory (one H100/H200) and ~75 GB of host memory; under 8
minutes on one H100/H200 (`--budget-s` stops starting new sections past that).

    python -m tests.benchmarks.gpu_expert_11b > gpu.json

It checks first, offline, what it needs (torch with CUDA, diffusers, safetensors; transformers
is not needed) and says what is missing (exit 2). It runs with PYTORCH_CUDA_ALLOC_CONF =
expandable_segments:True, as workers do (unless the variable is set), then runs its memory
section in a child process with expandable_segments:False first. One JSON object, printed at
the end (versions also first, in case what follows fails):
- versions, the allocator configuration, the SDPA backend the expert's attention runs on
  (the aten op the dispatcher picked, recorded by the profiler);
- per clip (129 and 33 frames) and rows (2, 16, 24): seconds per forward resident and streamed
  (3-block window, the plan's), whether the streamed output equals the resident one bit for bit
  (same weights), the bytes each streamed forward moved; `s_per_step`: 2 rows resident (one
  text-to-video request's step);
- per phase (denoise at 2/16/24 rows plain and with the `fast` preset's step cache over two
  steps, streamed denoise, one video's decode): `max_memory_allocated` and
  `max_memory_reserved` above what was held before, against the plan's bytes for that phase
  (the planner's own meta-device measurement of the same config and shape);
- the VAE decode, after `vae_platform_problem` (a platform known to take the slow native
  Conv3d path is reported, not run).
`--tiny` runs the same code on a tiny config, on the CPU when there is no GPU: the CI smoke test
of this script (its timings mean nothing).
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
NEEDED = ("torch", "diffusers", "safetensors", "numpy")
ROOT = Path(__file__).resolve().parents[2]


def missing_dependencies(tiny: bool) -> list[str]:
    """What this machine lacks to run the script, checked without importing CUDA or the network."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if not missing and not tiny:
        import torch

        if not torch.cuda.is_available():
            missing.append(f"a CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    return missing


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny config; CPU allowed (smoke test)")
    parser.add_argument("--memory-only", action="store_true", help="the memory section only (the allocator A/B child)")
    parser.add_argument("--no-allocator-ab", action="store_true", help="skip the run with expandable_segments:False")
    parser.add_argument("--budget-s", type=float, default=420, help="start no new section past this many seconds")
    args = parser.parse_args(argv)
    missing = missing_dependencies(args.tiny)
    if missing:
        print(json.dumps({"error": "missing dependencies", "missing": missing}))
        raise SystemExit(2)
    os.environ.setdefault(ALLOC_CONF, "expandable_segments:True")  # before CUDA initialises, as workers run
    return Run(args).run()


# torch is imported here, but CUDA initialises only at the first CUDA call, after main() has set
# the allocator's configuration; a machine without torch gets the dependency report above.
try:
    import torch
except ImportError:
    torch = None


@dataclass(frozen=True)
class Shape:
    config: object  # MMDiTConfig
    frames: dict[int, int]  # video frames -> latent frames
    latent_size: int
    text_tokens: int
    rows: tuple[int, ...]


def shapes():
    from pipeline.models.expert import MMDiTConfig

    full = Shape(MMDiTConfig(), {129: 33, 33: 9}, latent_size=32, text_tokens=512, rows=(2, 16, 24))
    tiny = Shape(MMDiTConfig(vec_in_dim=16, context_in_dim=32, hidden_size=64, num_heads=2, depth=2, depth_single_blocks=2,
                             axes_dim=[8, 12, 12]), {9: 3, 5: 2}, latent_size=8, text_tokens=8, rows=(2, 16, 24))
    return full, tiny


WINDOW = 3  # the plan's streaming window
RUNS = 2  # timed runs after one warm-up; the best is reported
PARIS_2_VAE = ROOT / "weights" / "paris-2" / "vae"


def gib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**30, 3)


class Run:
    def __init__(self, args):
        from torch.nn.attention import SDPBackend

        self.args, self.start = args, time.perf_counter()
        full, tiny = shapes()
        self.shape = tiny if args.tiny else full
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.type == "cuda"
        self.attention = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]
        self.result: dict = {"config": "tiny" if args.tiny else "11B", "versions": self.versions(),
                             "allocator": os.environ.get(ALLOC_CONF), "attention_backends": [b.name for b in self.attention],
                             "skipped": []}

    # -- helpers -----------------------------------------------------------------------------
    def versions(self) -> dict:
        return {"torch": torch.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if self.cuda else None,
                "device": torch.cuda.get_device_name(self.device) if self.cuda else "cpu"}

    def over_budget(self, section: str) -> bool:
        if time.perf_counter() - self.start > self.args.budget_s:
            self.result["skipped"].append(section)
            return True
        return False

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def timed(self, fn) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def best_of(self, fn, runs: int = RUNS) -> float:
        fn()  # warm-up: kernel choice, allocator
        return min(self.timed(fn) for _ in range(runs))

    def memory(self, fn) -> dict:
        """Peak allocated and reserved bytes above what was held before `fn`. On a CPU the
        planner's own tracker counts what `fn` allocates (the CI check that the script compares
        like with like); there is no allocator cache to report."""
        if not self.cuda:
            from pipeline.planner.peak_memory import PeakMemory

            with PeakMemory() as tracked:
                fn()
            return {"allocated": tracked.peak, "reserved": None}
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        allocated, reserved = torch.cuda.memory_allocated(self.device), torch.cuda.memory_reserved(self.device)
        fn()
        self.sync()
        return {"allocated": torch.cuda.max_memory_allocated(self.device) - allocated,
                "reserved": torch.cuda.max_memory_reserved(self.device) - reserved}

    def random_expert(self, seed: int):
        """Random bf16 weights drawn on the device (fast on a GPU), handed over in host memory as
        the loader hands a component to the residency manager."""
        from pipeline.models.expert import MMDiT

        torch.manual_seed(seed)
        with torch.device("meta"):
            model = MMDiT(self.shape.config)
        model = model.to_empty(device=self.device).to(torch.bfloat16)
        generator = torch.Generator(self.device).manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.02, generator=generator)
        return model.cpu().eval()

    def inputs(self, latent_frames: int, rows: int) -> tuple:
        """MMDiT.forward's arguments as the engine builds them (engine.expert_inputs' dtypes)."""
        from pipeline.models.expert import image_positions

        config, h, bf = self.shape.config, self.shape.latent_size, torch.bfloat16
        n = latent_frames * (h // config.patch_size) ** 2
        g = torch.Generator(device=self.device).manual_seed(0)
        return (torch.randn(rows, n, config.in_channels, device=self.device, dtype=bf, generator=g),
                image_positions(latent_frames, h, h, config.patch_size)[None].expand(rows, -1, -1).to(self.device),
                torch.randn(rows, self.shape.text_tokens, config.context_in_dim, device=self.device, dtype=bf, generator=g),
                torch.zeros(rows, self.shape.text_tokens, 3, device=self.device),
                torch.full((rows,), 0.7, device=self.device, dtype=bf),
                torch.randn(rows, config.vec_in_dim, device=self.device, dtype=bf, generator=g),
                torch.zeros(rows, n, config.in_channels + config.patch_size**2, device=self.device, dtype=bf))

    def clip(self, frames: int, latent_frames: int):
        from pipeline.planner.footprint import ClipShape

        h, p = self.shape.latent_size, self.shape.config.patch_size
        return ClipShape(width=h * 8, height=h * 8, frames=frames, latent_frames=latent_frames, latent_height=h,
                         latent_width=h, image_tokens=latent_frames * (h // p) ** 2, text_tokens=self.shape.text_tokens)

    # -- sections ----------------------------------------------------------------------------
    def run(self) -> dict:
        from pipeline.residency import Residency

        print(json.dumps({"versions": self.result["versions"], "allocator": self.result["allocator"]}), flush=True)
        if self.cuda and not (self.args.memory_only or self.args.no_allocator_ab or self.args.tiny):
            # first, while this process holds nothing: two processes' pinned experts would not fit the host
            self.result["default_allocator"] = self.allocator_ab()
        t0 = time.perf_counter()
        self.resident = Residency(self.device)
        self.streamed = Residency(self.device, streamed={"expert": WINDOW})
        for residency in (self.resident, self.streamed):  # the same seed: the same weights
            residency.register("expert", lambda: self.random_expert(0), 0)
        with torch.inference_mode():
            self.expert = self.resident.get("expert")
            self.streaming = self.streamed.get("expert")  # read to its pinned slab
        slab = self.streamed.host_copy("expert")
        self.result |= {"expert_gib": gib(slab.layout.raw_bytes), "slab_over_raw": round(slab.nbytes / slab.layout.raw_bytes, 6),
                        "init_seconds": round(time.perf_counter() - t0, 1), "sdpa_backend": self.sdpa_backend()}
        timings = self.result["section_seconds"] = {}
        sections = [("phases", self.phases), ("vae_decode", self.decode)]
        if not self.args.memory_only:
            sections[:0] = [("copies", lambda: self.copies(slab)), ("forwards", self.forwards)]
        for name, section in sections:
            t = time.perf_counter()
            section()
            timings[name] = round(time.perf_counter() - t, 1)
        self.result["seconds"] = round(time.perf_counter() - self.start, 1)
        print(json.dumps(self.result, indent=2), flush=True)
        return self.result

    def sdpa_backend(self) -> list[str]:
        """The attention ops the dispatcher picked for one 2-row forward at the smallest clip."""
        from torch.nn.attention import sdpa_kernel
        from torch.profiler import profile

        frames = min(self.shape.frames.values())
        with torch.inference_mode(), sdpa_kernel(self.attention), profile() as prof:
            self.expert(*self.inputs(frames, 2))
        return sorted({e.name for e in prof.events() if e.name.startswith("aten::_scaled_dot_product")})

    def copies(self, slab) -> None:
        units, transfers = slab.layout.units, self.streamed.transfers

        def one(unit) -> dict:
            def copy():
                buffer = transfers.alloc(unit.nbytes)
                transfers.wait(transfers.ahead([(buffer, slab.unit(unit))]))
                del buffer  # after the wait: freed once the compute stream is past the copy

            seconds = self.best_of(copy, runs=1 if self.args.tiny else 3)
            return {"bytes": unit.nbytes, "seconds": round(seconds, 5), "gb_per_s": round(unit.nbytes / seconds / 1e9, 1)}

        def reload():
            self.resident.evict("expert")
            self.resident.get("expert")

        copies = {"double_block": one(units[1]), "single_block": one(units[1 + self.shape.config.depth])}
        with torch.inference_mode():
            whole = self.best_of(reload, 1 if self.args.tiny else RUNS)
        self.expert = self.resident.get("expert")
        copies["expert"] = {"bytes": slab.nbytes, "seconds": round(whole, 4), "gb_per_s": round(slab.nbytes / whole / 1e9, 1)}
        self.result["copies"] = copies

    def forwards(self) -> None:
        from torch.nn.attention import sdpa_kernel

        cases = []
        for frames, latent_frames in self.shape.frames.items():
            for rows in self.shape.rows:
                if self.over_budget(f"forward {frames} frames {rows} rows"):
                    continue
                x = self.inputs(latent_frames, rows)
                runs = 1 if self.args.tiny or rows > 2 else RUNS  # the large cases take seconds each: one timed run
                with torch.inference_mode(), sdpa_kernel(self.attention):
                    resident_s = self.best_of(lambda: self.expert(*x), runs)
                    before = self.streamed.stats.bytes_streamed
                    streamed_s = self.best_of(lambda: self.streaming(*x), runs)
                    moved = (self.streamed.stats.bytes_streamed - before) // (1 + runs)
                    equal = torch.equal(self.expert(*x), self.streaming(*x))
                cases.append({"frames": frames, "latent_frames": latent_frames, "rows": rows,
                              "resident_s": round(resident_s, 4), "streamed_s": round(streamed_s, 4),
                              "streamed_over_resident": round(streamed_s / resident_s, 3),
                              "streamed_equals_resident": equal, "bytes_streamed_per_forward": moved})
                del x
        self.result["cases"] = cases
        self.result["s_per_step"] = {str(c["frames"]): c["resident_s"] for c in cases if c["rows"] == 2}

    def phases(self) -> None:
        """Per phase, the measured peaks against the plan's bytes for the same config and clip."""
        from torch.nn.attention import sdpa_kernel

        from pipeline.models.expert import MMDiT
        from pipeline.planner.footprint import measure_expert
        from pipeline.sampling import Branch
        from pipeline.speed import PRESETS, Speed
        from pipeline.step_cache import CacheRow, StepCache, cached_forward

        with torch.device("meta"):
            meta = MMDiT(self.shape.config).to(torch.bfloat16).eval()
        phases = {}
        clips = list(self.shape.frames.items())
        for frames, latent_frames in clips[:1] if self.args.memory_only else clips:  # the A/B child: the largest clip
            clip = self.clip(frames, latent_frames)
            cost = measure_expert(meta, clip)
            for rows in self.shape.rows:
                if self.over_budget(f"memory {frames} frames {rows} rows"):
                    continue
                x = self.inputs(latent_frames, rows)
                plain = cost.activation.at(rows)
                caches = [StepCache(PRESETS[Speed.FAST].cache, 50, 1) for _ in range(rows)]

                def two_cached_steps():  # the second step with every entry alive and every row computing: the worst
                    for step in (10, 11):
                        cached_forward(self.expert, x, [CacheRow(c, "expert", Branch.COND, step) for c in caches],
                                       decide=lambda signal, r: [None] * len(r))

                with torch.inference_mode(), sdpa_kernel(self.attention):
                    phases[f"denoise {frames}f {rows} rows"] = {**self.memory(lambda: self.expert(*x).float()), "plan": plain}
                    phases[f"denoise {frames}f {rows} rows fast"] = {
                        **self.memory(two_cached_steps), "plan": plain + 3 * rows * cost.image_row_bytes}
                    phases[f"denoise {frames}f {rows} rows streamed"] = {
                        **self.memory(lambda: self.streaming(*x).float()),
                        "plan": plain + WINDOW * max(cost.block_bytes) + cost.stem_bytes}
                del x, caches, two_cached_steps
        for p in phases.values():
            p["allocated_over_plan"] = None if p["allocated"] is None else round(p["allocated"] / p["plan"], 3)
            p["reserved_over_plan"] = None if p["reserved"] is None else round(p["reserved"] / p["plan"], 3)
            p.update({k: gib(p[k]) for k in ("allocated", "reserved", "plan")})
        self.result["memory"] = phases

    def decode(self) -> None:
        self.result["vae_decode"] = self.decode_once()

    def decode_once(self) -> dict:
        from pipeline.encoders import vae_decode
        from pipeline.planner.footprint import peak_bytes, vae_decode as meta_decode
        from pipeline.vae_platform import vae_platform_problem

        frames, latent_frames = next(iter(self.shape.frames.items()))
        dtype = "bf16" if self.cuda else "fp32"
        problem = vae_platform_problem(self.device.type, torch.__version__,
                                       torch.backends.cudnn.version() if self.cuda else None, dtype)
        if problem:
            return {"frames": frames, "skipped": problem}
        if self.over_budget("vae decode"):
            return {"frames": frames, "skipped": "time budget"}
        self.resident.evict("expert")  # room for the decode
        vae = self.random_vae()
        meta_vae, shape = self.random_vae(meta=True), self.clip(frames, latent_frames)
        plan = peak_bytes(lambda: meta_decode(meta_vae, shape, 1))
        latents = torch.randn(1, vae.config.latent_channels, latent_frames, self.shape.latent_size, self.shape.latent_size,
                              device=self.device)
        if self.cuda:
            torch.cuda.empty_cache()
        seconds = {}
        try:
            with torch.inference_mode():
                memory = self.memory(lambda: seconds.setdefault("s", self.timed(lambda: vae_decode(vae, latents))))
        except torch.OutOfMemoryError as exc:
            return {"frames": frames, "error": str(exc).splitlines()[0], "plan": gib(plan)}
        return {"frames": frames, "seconds": round(seconds["s"], 3), "plan": gib(plan),
                **{k: gib(v) for k, v in memory.items()}}

    def random_vae(self, meta: bool = False):
        from diffusers import AutoencoderKLHunyuanVideo

        from pipeline.encoders import configure_vae_decoding

        if self.args.tiny:
            from weights.recipe.vae import build_vae

            with torch.device("meta" if meta else "cpu"):
                vae = build_vae(seed=0, block_out_channels=(8, 16, 16))
        else:
            with torch.device("meta" if meta else self.device):
                vae = AutoencoderKLHunyuanVideo.from_config(AutoencoderKLHunyuanVideo.load_config(PARIS_2_VAE))
        configure_vae_decoding(vae)
        if meta:
            return vae.to("meta", torch.bfloat16 if self.cuda else torch.float32).eval()
        return vae.to(self.device, torch.bfloat16 if self.cuda else torch.float32).eval()

    def allocator_ab(self) -> dict:
        """The memory section in a fresh process with expandable segments off (run before this
        process loads anything), within a third of the time budget."""
        env = {**os.environ, ALLOC_CONF: "expandable_segments:False", "PYTHONPATH": str(ROOT)}
        left = max(60, self.args.budget_s / 3)
        try:
            out = subprocess.run([sys.executable, "-m", "tests.benchmarks.gpu_expert_11b", "--memory-only",
                                  "--budget-s", str(left)], env=env, capture_output=True, text=True, timeout=left + 120)
        except subprocess.TimeoutExpired:
            return {"error": "timed out"}
        try:
            child = json.loads(out.stdout[out.stdout.index("\n{") + 1:])
        except ValueError:
            return {"error": out.stderr[-2000:]}
        return {"allocator": child["allocator"], "memory": child["memory"], "vae_decode": child["vae_decode"]}


if __name__ == "__main__":
    main()
