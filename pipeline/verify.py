"""`paris weights verify`: check a model folder against its manifest and configs from the
safetensors headers alone (nothing is loaded), reporting every problem at once."""

import json
from pathlib import Path

import torch

from .checkpoint import TORCH_DTYPES, compare, expected_tensors, read_header
from .errors import ModelFolderError
from .loader import (LIBRARY_CLASSES, OUR_CLASSES, build_ours, geometry_problems, library_skeleton,
                     read_geometry_configs)
from .manifest import Component, Manifest, read_manifest


def _library_key_names(module: torch.nn.Module, found: dict) -> dict:
    """Checkpoint keys as transformers' loader will name them: transformers 5 renames legacy
    keys (DINOv2's attention.attention.query -> attention.q_proj, ...) while loading. Uses the
    library's own rules; older versions without them load keys as they are."""
    try:
        from transformers.core_model_loading import WeightRenaming, rename_source_key
        from transformers.conversion_mapping import get_model_conversion_mapping
    except ImportError:
        return found
    if not hasattr(module, "base_model_prefix"):
        return found
    transforms = get_model_conversion_mapping(module)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    meta = module.state_dict()
    return {rename_source_key(k, renamings, converters, module.base_model_prefix, meta)[0]: v for k, v in found.items()}


def verify_component(name: str, comp: Component, root: Path) -> list[str]:
    folder = root / comp.path
    where = f"{name} ({folder})"
    problems = []
    if comp.tokenizer and not (root / comp.tokenizer).is_dir():
        problems.append(f"{name}: tokenizer folder {root / comp.tokenizer} missing")
    if not folder.is_dir():
        return problems + [f"{where}: folder missing"]
    if not (folder / "config.json").is_file():
        return problems + [f"{where}: config.json missing"]
    try:
        if comp.cls in OUR_CLASSES:
            module = build_ours(comp, folder, torch.device("meta"), load_weights=False)
        elif comp.cls in LIBRARY_CLASSES:
            module = library_skeleton(comp, folder)
        else:
            return problems + [f"{where}: unknown class {comp.cls!r}"]
    except (ValueError, TypeError, OSError, json.JSONDecodeError) as exc:
        return problems + [f"{where}: bad config.json ({exc})"]
    found, file_problems = read_header(folder)
    problems += [f"{name}: {p}" for p in file_problems]
    if file_problems and not found:
        return problems
    if comp.cls in LIBRARY_CLASSES:
        found = _library_key_names(module, found)
    expected, tied = expected_tensors(module, TORCH_DTYPES[comp.dtype])
    optional = {n for group in tied if group & set(found) for n in group}
    optional |= {n for group in tied if not group & set(found) for n in sorted(group)[1:]}
    return problems + compare(expected, found, where, check_dtype=True, optional=optional)


def verify_geometry(manifest: Manifest, root: Path) -> list[str]:
    """The limits against the VAE and expert configs, as loading checks them (a config that
    cannot be read is already reported by its component)."""
    try:
        expert, vae = read_geometry_configs(manifest, root)
    except ModelFolderError:
        return []
    return geometry_problems(manifest, root, expert, vae)


def verify_model_folder(root: str | Path) -> list[str]:
    root = Path(root)
    try:
        manifest = read_manifest(root)
    except ModelFolderError as exc:
        return exc.problems
    problems = []
    for name, comp in manifest.components.named().items():
        problems += verify_component(name, comp, root)
    return problems + verify_geometry(manifest, root)
