"""Load a model folder (model.json + component folders) into a `DDMModel`.

Weights load lazily through the residency manager; tokenizers, configs and the manifest are
read up front so a missing or broken component fails at load time, not mid-job.
"""

import json
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import AutoencoderKLHunyuanVideo
from diffusers.configuration_utils import FrozenDict
from transformers import AutoImageProcessor, AutoTokenizer

from .checkpoint import TORCH_DTYPES, load_strict, read_header
from .encoders import configure_vae_decoding
from .errors import ModelFolderError
from .manifest import Component, Manifest, read_manifest
from .models.expert import MMDiT, MMDiTConfig
from .models.router import DiTRouter, RouterConfig
from .residency import Residency


def quiet_library_logging() -> None:
    """Silence the libraries' progress bars and load chatter, which would interleave with our
    progress and structured logs. Each command that loads models calls it as it starts (not at
    import: importing a module should not change a process's logging)."""
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

ATTENTION = "sdpa"  # for the transformers encoders (T5, CLIP, DINOv2)


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
    return load_strict(module, folder, TORCH_DTYPES[component.dtype]).to(device).eval()


def library_skeleton(component: Component, folder: Path) -> torch.nn.Module:
    """The library class built from the folder's config on the meta device: no weights, but
    its config complete with the library's own defaults."""
    cls = LIBRARY_CLASSES[component.cls]
    with torch.device("meta"):
        if cls is AutoencoderKLHunyuanVideo:
            return cls.from_config(cls.load_config(folder))
        return cls(cls.config_class.from_pretrained(folder))


def load_library(component: Component, folder: Path, device: torch.device):
    cls = LIBRARY_CLASSES[component.cls]
    dtype = TORCH_DTYPES[component.dtype]
    if cls is AutoencoderKLHunyuanVideo:
        # Strictly from the folder's safetensors, whatever the file is called: diffusers' own
        # loader looks for its default name only, and Open-Sora ships `hunyuan_vae.safetensors`.
        module = load_strict(library_skeleton(component, folder), folder, dtype)
        configure_vae_decoding(module)
    else:
        # Attention named, not left to the library's default: T5 ran eager-only in transformers 4
        # and sdpa in 5, and the two differ by ~1e-6, enough to move paris-mini's frames.
        module, info = cls.from_pretrained(folder, dtype=dtype, attn_implementation=ATTENTION, output_loading_info=True)
        problems = [f"{folder}: {kind} {sorted(info[kind])}" for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)]
        if problems:
            raise ModelFolderError(problems)
    return module.to(device).eval()


def component_bytes(component: Component, folder: Path) -> int:
    tensors, _ = read_header(folder)
    element = torch.tensor([], dtype=TORCH_DTYPES[component.dtype]).element_size()
    return sum(element * int(torch.Size(shape).numel()) for shape, _ in tensors.values())


def read_geometry_configs(manifest: Manifest, folder: Path) -> tuple[MMDiTConfig, FrozenDict]:
    """The first expert's config (its patch size) and the VAE's config complete with diffusers'
    defaults (latent channels, spatial and temporal compression)."""
    c = manifest.components
    try:
        expert = MMDiTConfig.from_dict(read_config(folder / c.experts[0].path))
        vae = library_skeleton(c.vae, folder / c.vae.path).config
    except ModelFolderError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelFolderError(f"{folder}: unreadable expert or VAE config ({exc})") from exc
    return expert, vae


def geometry_problems(manifest: Manifest, folder: Path, expert: MMDiTConfig, vae: FrozenDict) -> list[str]:
    """The manifest's limits (which the API validates requests with, no weights loaded) must
    agree with the VAE's compression and the expert's patch size."""
    problems = manifest.limits.geometry_problems(vae.spatial_compression_ratio, vae.temporal_compression_ratio,
                                                 expert.patch_size)
    return [f"{folder / 'model.json'}: {p}" for p in problems]


class DDMModel:
    """A loaded model folder: manifest, tokenizers, latent geometry, and lazily resident
    components (under the registry names of `Components.named`)."""

    def __init__(self, folder: Path, manifest: Manifest, device: torch.device, residency: Residency):
        self.folder, self.manifest, self.device, self.residency = folder, manifest, device, residency
        c = manifest.components
        self.components: dict[str, Component] = c.named()
        problems = [f"{folder / comp.path}: component folder missing" for comp in self.components.values()
                    if not (folder / comp.path).is_dir()]
        if problems:
            raise ModelFolderError(problems)
        for name, comp in self.components.items():
            residency.register(name, self._loader(comp), component_bytes(comp, folder / comp.path))
        self.t5_tokenizer = AutoTokenizer.from_pretrained(folder / (c.t5.tokenizer or c.t5.path))
        self.clip_tokenizer = AutoTokenizer.from_pretrained(folder / (c.clip.tokenizer or c.clip.path))
        self.image_processor = AutoImageProcessor.from_pretrained(folder / c.dinov2.path) if c.dinov2 else None

        # The latent geometry is the VAE's, as diffusers builds it (no defaults of our own).
        self.expert_config, vae = read_geometry_configs(manifest, folder)
        problems = geometry_problems(manifest, folder, self.expert_config, vae)
        if problems:
            raise ModelFolderError(problems)
        self.latent_channels: int = vae.latent_channels
        self.spatial_compression: int = vae.spatial_compression_ratio
        self.temporal_compression: int = vae.temporal_compression_ratio

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

    def get(self, name: str, demand=frozenset()):
        return self.residency.get(name, demand)


def load_model(folder: str | Path, device: str | torch.device = "cpu", budget_bytes: int | None = None,
               host_budget_bytes: int | None = None, streamed: dict[str, int] | None = None,
               on_demand: frozenset[str] = frozenset(), encoder_room: int = 0) -> DDMModel:
    """`budget_bytes`: device memory for weights placed whole (None: no limit);
    `host_budget_bytes`: host copies (None: a share of the RAM); `streamed`: components run
    block by block from their host copy, name -> window blocks (the residency plan's choice);
    `on_demand` encoders may also fill `encoder_room` while they encode."""
    folder, device = Path(folder), torch.device(device)
    residency = Residency(device, budget_bytes, host_budget_bytes, streamed, on_demand=on_demand, encoder_room=encoder_room)
    return DDMModel(folder, read_manifest(folder), device, residency)
