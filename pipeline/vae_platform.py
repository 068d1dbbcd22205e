"""Torch and cuDNN versions known to fail on the HunyuanVideo VAE at real size, refused at start
(a worker that starts would fail every request after its 50 denoising steps).

- torch < 2.7 on CUDA: at 256x256 and 129 frames the decoder's up-block-2 upsample output has
  2^31 elements, and `upsample_nearest3d` raises on more than INT_MAX (pytorch#144855).
- cuDNN 9.8 to 9.14 under a half-precision VAE: PyTorch does not use cuDNN for fp16/bf16 Conv3d
  with a kernel larger than 1 on those versions (Convolution.cpp) and falls back to its native
  conv3d, whose buffer for this decoder is ~117 GB.

`vae_platform_problem` is a pure function of the versions, so every rule is tested on a CPU;
`check_vae_platform` applies it to the running torch and cuDNN, on CUDA only.
"""

import torch

from .manifest import DType

MIN_TORCH_CUDA = (2, 7)
CUDNN_HALF_CONV3D_BROKEN = (90800, 91500)  # torch.backends.cudnn.version() numbering: 9.8.0 up to 9.15.0


class UnsupportedPlatform(RuntimeError):
    """This torch/cuDNN is known to fail on the VAE: the worker refuses to start on it."""


def _release(version: str) -> tuple[int, int]:
    """'2.6.0+cu124' -> (2, 6)."""
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _cudnn_label(version: int) -> str:
    """torch's cuDNN 9 numbering (major * 10000 + minor * 100 + patch) as 'major.minor.patch'."""
    return f"{version // 10000}.{version // 100 % 100}.{version % 100}"


def vae_platform_problem(device_type: str, torch_version: str, cudnn_version: int | None, vae_dtype: DType) -> str | None:
    """Why this platform cannot run the VAE decoder at real size, or None."""
    if device_type != "cuda":
        return None
    if _release(torch_version) < MIN_TORCH_CUDA:
        return (f"torch {torch_version} cannot decode 129-frame 256x256 videos on CUDA: upsample_nearest3d raises on"
                f" the decoder's 2^31-element upsample (pytorch#144855); install torch >= {'.'.join(map(str, MIN_TORCH_CUDA))}")
    low, high = CUDNN_HALF_CONV3D_BROKEN
    if cudnn_version is not None and low <= cudnn_version < high and vae_dtype in (DType.BF16, DType.FP16):
        return (f"cuDNN {_cudnn_label(cudnn_version)} makes PyTorch skip cuDNN for {vae_dtype} Conv3d and fall back to"
                f" a native convolution that needs ~117 GB to decode one video; use cuDNN 9.15 or later (or one older"
                f" than 9.8), e.g. a torch build that ships it")
    return None


def check_vae_platform(device: torch.device, vae_dtype: DType) -> None:
    """Raises UnsupportedPlatform on a CUDA platform known to fail on the VAE."""
    if device.type != "cuda":
        return
    problem = vae_platform_problem(device.type, torch.__version__, torch.backends.cudnn.version(), vae_dtype)
    if problem:
        raise UnsupportedPlatform(problem)
