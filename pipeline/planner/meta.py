"""Components built from their configs on the meta device (shapes only, no weights read), and
the bytes their weights take on the device."""

from pathlib import Path

import torch
from torch import nn

from ..checkpoint import TORCH_DTYPES, read_header
from ..loader import OUR_CLASSES, build_ours, component_bytes, library_skeleton
from ..manifest import Component


def meta_module(component: Component, folder: Path) -> nn.Module:
    """The component as the loader builds it (class, config, dtype), on the meta device, in eval mode."""
    if component.cls in OUR_CLASSES:
        module = build_ours(component, folder, torch.device("meta"), load_weights=False)
    else:
        module = library_skeleton(component, folder)
    return module.to(TORCH_DTYPES[component.dtype]).eval()


def module_bytes(module: nn.Module) -> int:
    """Bytes of the weights a checkpoint of `module` stores: its state dict, tied tensors once
    (non-persistent buffers such as CLIP's 77 position ids are left out, as files leave them)."""
    tensors = {id(t): t for t in module.state_dict(keep_vars=True).values()}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def weight_bytes(component: Component, folder: Path) -> tuple[int, str]:
    """Device bytes of a component's weights in the manifest's dtype, and where the figure came
    from: the safetensors headers when the folder holds readable weights, else the config."""
    tensors, problems = read_header(folder)
    if tensors and not problems:
        return component_bytes(component, folder), "safetensors"
    return module_bytes(meta_module(component, folder)), "config"
