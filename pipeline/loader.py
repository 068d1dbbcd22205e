"""Load a model folder (model.json + component folders) into a `DDMModel`.

Weights load lazily through the residency manager; tokenizers, configs and the manifest are
read up front so a missing or broken component fails at load time, not mid-job.
"""

import json
from functools import cached_property
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import AutoencoderKLHunyuanVideo
from transformers import AutoImageProcessor, AutoTokenizer

from .checkpoint import DTYPE_NAMES, load_strict, read_header
from .encoders import configure_vae_decoding
from .errors import ModelFolderError
from .manifest import Component, Manifest, read_manifest
from .models.expert import MMDiT, MMDiTConfig
from .models.router import DiTRouter, RouterConfig
from .residency import Residency

# Library progress bars and load chatter would interleave with ours and the structured logs.
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()

OUR_CLASSES = {"MMDiT": (MMDiT, MMDiTConfig), "DiTRouter": (DiTRouter, RouterConfig)}
LIBRARY_CLASSES = {
    "T5EncoderModel": transformers.T5EncoderModel,
    "CLIPTextModel": transformers.CLIPTextModel,
    "Dinov2Model": transformers.Dinov2Model,
    "AutoencoderKLHunyuanVideo": AutoencoderKLHunyuanVideo,
}


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFolderError(f"{path}: config.json not found")
    return json.loads(path.read_text())


def build_ours(component: Component, folder: Path, device: torch.device, load_weights: bool = True):
    cls, config_cls = OUR_CLASSES[component.cls]
    config = config_cls.from_dict(read_config(folder))
    with torch.device("meta"):
        module = cls(config)
    if not load_weights:
        return module
    return load_strict(module, folder, DTYPE_NAMES[component.dtype]).to(device).eval()


def load_library(component: Component, folder: Path, device: torch.device):
    cls = LIBRARY_CLASSES[component.cls]
    dtype = DTYPE_NAMES[component.dtype]
    if cls is AutoencoderKLHunyuanVideo:
        module = cls.from_pretrained(folder, torch_dtype=dtype)
        configure_vae_decoding(module)
    else:
        module, info = cls.from_pretrained(folder, dtype=dtype, output_loading_info=True)
        problems = [f"{folder}: {kind} {sorted(info[kind])}" for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)]
        if problems:
            raise ModelFolderError(problems)
    return module.to(device).eval()


def component_bytes(component: Component, folder: Path) -> int:
    tensors, _ = read_header(folder)
    element = torch.tensor([], dtype=DTYPE_NAMES[component.dtype]).element_size()
    return sum(element * int(torch.Size(shape).numel()) for shape, _ in tensors.values())


class DDMModel:
    """A loaded model folder: manifest, tokenizers, and lazily resident components."""

    def __init__(self, folder: Path, manifest: Manifest, device: torch.device, residency: Residency):
        self.folder, self.manifest, self.device, self.residency = folder, manifest, device, residency
        c = manifest.components
        self.components: dict[str, Component] = {"t5": c.t5, "clip": c.clip, "vae": c.vae, "router": c.router}
        if c.dinov2 is not None:
            self.components["dinov2"] = c.dinov2
        for i, expert in enumerate(c.experts):
            self.components[f"expert_{i}"] = expert
        problems = [f"{folder / comp.path}: component folder missing" for comp in self.components.values()
                    if not (folder / comp.path).is_dir()]
        if problems:
            raise ModelFolderError(problems)
        for name, comp in self.components.items():
            residency.register(name, self._loader(comp), component_bytes(comp, folder / comp.path))
        self.t5_tokenizer = AutoTokenizer.from_pretrained(folder / (c.t5.tokenizer or c.t5.path))
        self.clip_tokenizer = AutoTokenizer.from_pretrained(folder / (c.clip.tokenizer or c.clip.path))
        self.image_processor = AutoImageProcessor.from_pretrained(folder / c.dinov2.path) if c.dinov2 else None

    def _loader(self, comp: Component):
        """Reads a component into host memory; the residency manager moves it to the device."""
        folder, host = self.folder / comp.path, torch.device("cpu")
        if comp.cls in OUR_CLASSES:
            return lambda: build_ours(comp, folder, host)
        if comp.cls in LIBRARY_CLASSES:
            return lambda: load_library(comp, folder, host)
        raise ModelFolderError(f"{folder}: unknown component class {comp.cls!r}")

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def num_experts(self) -> int:
        return len(self.manifest.components.experts)

    def one_expert_budget(self) -> int:
        """A device budget where every non-expert component fits but only one expert does."""
        experts = [self.residency.nbytes(f"expert_{i}") for i in range(self.num_experts)]
        others = sum(self.residency.nbytes(n) for n in self.components if not n.startswith("expert_"))
        return others + int(max(experts) * 1.5)

    def get(self, name: str, demand=frozenset()):
        return self.residency.get(name, demand)

    @cached_property
    def expert_config(self) -> MMDiTConfig:
        return MMDiTConfig.from_dict(read_config(self.folder / self.manifest.components.experts[0].path))

    @cached_property
    def vae_config(self) -> dict:
        return read_config(self.folder / self.manifest.components.vae.path)

    @property
    def latent_channels(self) -> int:
        return self.vae_config.get("latent_channels", 16)

    @property
    def spatial_compression(self) -> int:
        return self.vae_config.get("spatial_compression_ratio", 8)

    @property
    def temporal_compression(self) -> int:
        return self.vae_config.get("temporal_compression_ratio", 4)


def load_model(folder: str | Path, device: str | torch.device = "cpu", budget_bytes: int | None = None,
               host_budget_bytes: int | None = None) -> DDMModel:
    """`budget_bytes`: device memory for weights (None: no limit); `host_budget_bytes`: pinned
    host copies kept for evicted components (CUDA)."""
    folder, device = Path(folder), torch.device(device)
    return DDMModel(folder, read_manifest(folder), device, Residency(device, budget_bytes, host_budget_bytes))
