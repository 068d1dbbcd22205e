"""safetensors checkpoints: strict loading and header-only inspection (never pickle)."""

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .errors import ModelFolderError
from .manifest import DType

TORCH_DTYPES = {DType.FP32: torch.float32, DType.FP16: torch.float16, DType.BF16: torch.bfloat16}
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def weight_files(folder: Path) -> list[Path]:
    """The folder's safetensors files: those named by an index file, else every *.safetensors."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        names = sorted(set(json.loads(indexes[0].read_text())["weight_map"].values()))
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def read_header(folder: Path) -> tuple[dict[str, tuple[tuple[int, ...], torch.dtype]], list[str]]:
    """Tensor name -> (shape, dtype) from safetensors headers alone; plus file problems."""
    tensors, problems = {}, []
    files = weight_files(folder)
    if not files:
        problems.append(f"{folder}: no *.safetensors weight files")
    for path in files:
        if not path.is_file():
            problems.append(f"{path}: weight file missing")
            continue
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    sl = f.get_slice(name)
                    tensors[name] = (tuple(sl.get_shape()), SAFETENSORS_DTYPES.get(sl.get_dtype(), sl.get_dtype()))
        except Exception as exc:  # a corrupt header is a problem to report, not a crash
            problems.append(f"{path}: unreadable safetensors file ({exc})")
    return tensors, problems


def compare(expected: dict[str, tuple[tuple[int, ...], torch.dtype]], found: dict, where: str,
            check_dtype: bool = True, optional: set[str] = frozenset()) -> list[str]:
    """Every mismatch between expected and found tensors, as readable lines."""
    problems = []
    missing = sorted(set(expected) - set(found) - set(optional))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"{where}: missing keys {missing}")
    if unexpected:
        problems.append(f"{where}: unexpected keys {unexpected}")
    for name in sorted(set(expected) & set(found)):
        (e_shape, e_dtype), (f_shape, f_dtype) = expected[name], found[name]
        if tuple(e_shape) != tuple(f_shape):
            problems.append(f"{where}: {name} has shape {list(f_shape)}, expected {list(e_shape)}")
        elif check_dtype and e_dtype != f_dtype:
            problems.append(f"{where}: {name} has dtype {f_dtype}, expected {e_dtype}")
    return problems


def expected_tensors(module: torch.nn.Module, dtype: torch.dtype) -> tuple[dict, list[set[str]]]:
    """Name -> (shape, dtype) of every tensor a checkpoint of `module` in `dtype` holds, plus the
    groups of names that share one tensor (tied weights), of which a file may hold only one."""
    params = module.state_dict(keep_vars=True)
    expected = {k: (tuple(v.shape), dtype if v.is_floating_point() else v.dtype) for k, v in params.items()}
    by_tensor: dict[int, set[str]] = {}
    for name, tensor in params.items():
        by_tensor.setdefault(id(tensor), set()).add(name)
    return expected, [names for names in by_tensor.values() if len(names) > 1]


def load_strict(module: torch.nn.Module, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """Load every tensor of `folder` into `module`; any missing, unexpected or misshapen key is
    an error naming the keys (dtype is converted, not checked, so fp32 files run in bf16)."""
    found, problems = read_header(folder)
    expected, _ = expected_tensors(module, dtype)
    problems += compare(expected, found, str(folder), check_dtype=False)
    if problems:
        raise ModelFolderError(problems)
    state = {}
    for path in weight_files(folder):
        state.update(load_file(str(path)))
    module.load_state_dict(state, strict=True, assign=True)
    return module.to(dtype)
