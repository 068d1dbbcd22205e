import math

import pytest
import torch
from safetensors.torch import save_file

from pipeline.checkpoint import load_strict
from pipeline.errors import ModelFolderError
from pipeline.models.expert import MMDiT, MMDiTConfig, image_positions, pack, unpack
from pipeline.models.layers import apply_rope, rope_cos_sin
from tests.support.tiny_model import tiny_expert_config


def open_sora_v2_keys(depth: int, single: int) -> set[str]:
    """Key names of an Open-Sora v2 MMDiT checkpoint (unfused), written out from its layout."""
    keys = set()

    def linear(prefix):
        keys.update({f"{prefix}.weight", f"{prefix}.bias"})

    for name in ["img_in", "time_in.in_layer", "time_in.out_layer", "vector_in.in_layer", "vector_in.out_layer",
                 "cond_in", "txt_in", "final_layer.linear", "final_layer.adaLN_modulation.1"]:
        linear(name)
    for n in range(depth):
        for s in ("img", "txt"):
            linear(f"double_blocks.{n}.{s}_mod.lin")
            for p in ("q_proj", "k_proj", "v_proj", "proj"):
                linear(f"double_blocks.{n}.{s}_attn.{p}")
            keys.update({f"double_blocks.{n}.{s}_attn.norm.query_norm.scale", f"double_blocks.{n}.{s}_attn.norm.key_norm.scale"})
            linear(f"double_blocks.{n}.{s}_mlp.0")
            linear(f"double_blocks.{n}.{s}_mlp.2")
    for n in range(single):
        for p in ("q_proj", "k_proj", "v_mlp", "linear2", "modulation.lin"):
            linear(f"single_blocks.{n}.{p}")
        keys.update({f"single_blocks.{n}.norm.query_norm.scale", f"single_blocks.{n}.norm.key_norm.scale"})
    return keys


def test_pack_unpack_round_trip():
    latent = torch.randn(2, 16, 3, 8, 12)
    tokens = pack(latent)
    assert tokens.shape == (2, 3 * 4 * 6, 64)
    # token (t=1, i=2, j=3) holds channel c's 2x2 patch at rows 4..5, cols 6..7, in (c, p, q) order
    n = 1 * 24 + 2 * 6 + 3
    assert torch.equal(tokens[0, n, :4], latent[0, 0, 1, 4:6, 6:8].reshape(-1))
    assert torch.equal(unpack(tokens, 3, 8, 12), latent)


def test_state_dict_keys_match_open_sora_v2_and_load_strictly(tmp_path):
    cfg = tiny_expert_config(depth=2, depth_single_blocks=2)
    model = MMDiT(cfg)
    assert set(model.state_dict()) == open_sora_v2_keys(2, 2)
    hidden = cfg.hidden_size
    assert model.state_dict()["single_blocks.0.v_mlp.weight"].shape == (int(hidden * (1 + cfg.mlp_ratio)), hidden)
    assert model.state_dict()["cond_in.weight"].shape == (hidden, 68)

    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    with torch.device("meta"):
        fresh = MMDiT(cfg)
    loaded = load_strict(fresh, tmp_path, torch.float32)
    assert all(torch.equal(loaded.state_dict()[k], state[k]) for k in state)


def test_strict_load_names_missing_unexpected_and_misshapen_keys(tmp_path):
    cfg = tiny_expert_config()
    state = MMDiT(cfg).state_dict()
    state.pop("txt_in.weight")
    state["extra.weight"] = torch.zeros(1)
    state["img_in.bias"] = torch.zeros(7)
    save_file(state, str(tmp_path / "model.safetensors"))
    with torch.device("meta"):
        fresh = MMDiT(cfg)
    with pytest.raises(ModelFolderError) as err:
        load_strict(fresh, tmp_path, torch.float32)
    message = str(err.value)
    assert "txt_in.weight" in message and "extra.weight" in message and "img_in.bias has shape [7]" in message


def reference_rope(x: torch.Tensor, ids: torch.Tensor, axes_dim: list[int], theta: float, interleaved=False) -> torch.Tensor:
    """RoPE element by element: angle j rotates dims (j, j + D/2) (rotate-half), or (2j, 2j+1) (FLUX's interleaved)."""
    b, h, l, d = x.shape
    out = torch.empty_like(x, dtype=torch.float64)
    for n in range(l):
        angles = []
        for axis, dim in enumerate(axes_dim):
            for k in range(dim // 2):
                angles.append(float(ids[0, n, axis]) * theta ** (-2 * k / dim))
        for j, phi in enumerate(angles):
            first, second = (2 * j, 2 * j + 1) if interleaved else (j, j + d // 2)
            a, c = x[..., n, first].double(), x[..., n, second].double()
            out[..., n, first] = a * math.cos(phi) - c * math.sin(phi)
            out[..., n, second] = c * math.cos(phi) + a * math.sin(phi)
    return out


def test_rotate_half_rope_matches_reference():
    axes = [4, 6, 6]
    ids = image_positions(2, 6, 4)[None].float()
    x = torch.randn(1, 2, ids.shape[1], sum(axes), dtype=torch.float32)
    cos, sin = rope_cos_sin(ids, axes, 10000)
    ours = apply_rope(x, cos, sin)
    assert torch.allclose(ours.double(), reference_rope(x, ids, axes, 10000), atol=1e-5)
    # FLUX's interleaved convention gives a different result on the same input
    assert not torch.allclose(ours.double(), reference_rope(x, ids, axes, 10000, interleaved=True), atol=1e-2)


def expert_inputs(cfg: MMDiTConfig, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    t, h, w = 3, 8, 8
    n = t * (h // 2) * (w // 2)
    return dict(
        img=torch.randn(batch, n, cfg.in_channels, generator=g),
        img_ids=image_positions(t, h, w)[None].expand(batch, -1, -1),
        txt=torch.randn(batch, 8, cfg.context_in_dim, generator=g),
        txt_ids=torch.zeros(batch, 8, 3),
        timesteps=torch.rand(batch, generator=g),
        y_vec=torch.randn(batch, cfg.vec_in_dim, generator=g),
        cond=torch.randn(batch, n, cfg.in_channels + 4, generator=g),
    )


def test_forward_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    cfg = tiny_expert_config(depth=2, depth_single_blocks=2)
    model = MMDiT(cfg).eval()
    torch.nn.init.normal_(model.cond_in.weight, std=0.02)  # exercise the i2v path too
    inputs = expert_inputs(cfg, 5, seed=1)
    with torch.no_grad():
        batched = model(**inputs)
        again = model(**inputs)
        alone = model(**{k: v[2:3] for k, v in inputs.items()})
    assert torch.equal(batched, again)
    assert torch.allclose(batched[2:3], alone, atol=1e-5)
    assert batched.shape == inputs["img"].shape


def test_config_accepts_open_sora_fields_and_rejects_fused():
    cfg = MMDiTConfig.from_dict({"from_pretrained": "x", "fused_qkv": False, "hidden_size": 3072, "use_liger_rope": True})
    assert cfg.hidden_size == 3072 and cfg.axes_dim == [16, 56, 56]
    with pytest.raises(ValueError, match="fused_qkv"):
        MMDiTConfig.from_dict({"fused_qkv": True})
