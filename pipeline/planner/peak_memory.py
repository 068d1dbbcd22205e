"""Peak bytes of the tensors a piece of code allocates, on real or meta tensors alike.

`PeakMemory` is a TorchDispatchMode: every aten op's output whose storage is not one of the op's
inputs' storages is a fresh allocation (views, in-place ops and `out=` write into an input's
storage and are not). Fresh storages are counted until Python frees them, which a weakref
finalizer on the storage object reports (torch keeps one Python object per live storage, so the
finalizer runs when the last tensor on that storage goes, meta storages included). Tensors that
existed before the mode (weights, the caller's inputs) are never counted.

Attention is charged as the CUDA kernel allocates it, not as the meta device would run it: on
meta, `torch._fused_sdp_choice` picks the MATH backend, which materialises the L x L score
matrix. Here `scaled_dot_product_attention` runs the fused kernel the GPU picks instead (flash
without a mask; memory-efficient with one), whose only allocations are the output and the fp32
log-sum-exp, and which FlopCounterMode counts as attention. On the CPU the same call runs
torch's CPU flash kernel, which allocates the same two tensors, so a real CPU run and a meta run
of one forward report the same peak.
"""

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten


def fused_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False) -> tuple:
    """Inference SDPA through the fused kernel a GPU would run (see the module docstring); its
    whole output tuple (attention output first, then the log-sum-exp and kernel metadata)."""
    if dropout_p or enable_gqa:
        raise NotImplementedError("PeakMemory models inference attention only (no dropout, no GQA)")
    if q.device.type == "cpu":
        return aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, is_causal=is_causal, attn_mask=attn_mask, scale=scale)
    if attn_mask is None:
        return aten._scaled_dot_product_flash_attention(q, k, v, is_causal=is_causal, scale=scale)
    mask = attn_mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])  # a view, as CUDA's dispatcher passes it
    return aten._scaled_dot_product_efficient_attention(q, k, v, mask, False, is_causal=is_causal, scale=scale)


class PeakMemory(TorchDispatchMode):
    """`live`: bytes of counted storages alive now; `peak`: the most alive at once."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}  # StorageImpl address -> bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        attention = func is aten.scaled_dot_product_attention.default
        out = fused_attention(*args, **kwargs) if attention else func(*args, **kwargs)
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._count(tensor.untyped_storage(), inputs)
        self.peak = max(self.peak, self.live)
        return out[0] if attention else out  # attention: the log-sum-exp is freed as it returns

    def _count(self, storage: torch.UntypedStorage, inputs: set[int]) -> None:
        key = storage._cdata
        if key in inputs or key in self._sizes:
            return
        self._sizes[key] = storage.nbytes()
        self.live += storage.nbytes()
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key)
