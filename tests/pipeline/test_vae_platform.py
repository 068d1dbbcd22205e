"""The torch and cuDNN versions known to fail on the VAE are refused at start, on CUDA only."""

import pytest
import torch

from pipeline.manifest import DType
from pipeline.vae_platform import UnsupportedPlatform, check_vae_platform, vae_platform_problem

FINE = ("cuda", "2.9.1+cu128", 91500, DType.BF16)


@pytest.mark.parametrize("device, torch_version, cudnn, dtype, refused", [
    (*FINE, None),
    ("cuda", "2.6.0+cu124", 90100, DType.BF16, "torch 2.6.0+cu124"),  # upsample_nearest3d on 2^31 elements
    ("cuda", "2.4.1", None, DType.FP32, "torch 2.4.1"),
    ("cuda", "2.7.0", 90100, DType.BF16, None),
    ("cuda", "2.10.0", 90800, DType.BF16, "cuDNN 9.8.0"),  # first broken release
    ("cuda", "2.10.0", 91002, DType.FP16, "cuDNN 9.10.2"),
    ("cuda", "2.10.0", 91499, DType.BF16, "cuDNN 9.14.99"),  # last broken one
    ("cuda", "2.10.0", 91500, DType.BF16, None),
    ("cuda", "2.10.0", 90701, DType.BF16, None),
    ("cuda", "2.10.0", 91002, DType.FP32, None),  # an fp32 VAE keeps cuDNN
    ("cpu", "2.4.1", None, DType.BF16, None),  # neither rule concerns a CPU
    ("cpu", "2.13.0", 91002, DType.BF16, None),
])
def test_known_failing_versions_are_named(device, torch_version, cudnn, dtype, refused):
    problem = vae_platform_problem(device, torch_version, cudnn, dtype)
    if refused is None:
        assert problem is None
    else:
        assert problem is not None and refused in problem


def test_the_check_runs_against_real_versions_only_on_cuda(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.4.0")  # would be refused on CUDA
    check_vae_platform(torch.device("cpu"), DType.BF16)
    with pytest.raises(UnsupportedPlatform, match="torch 2.4.0"):
        check_vae_platform(torch.device("cuda"), DType.BF16)
