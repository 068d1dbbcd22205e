import math

import pytest
import torch

from pipeline import sampling
from pipeline.models.expert import MMDiT, image_positions, pack
from tests.support.tiny_model import tiny_expert_config


def test_shift_for_256px_129_frames_matches_hand_computation():
    # 256x256 -> 32x32 latent -> 16x16 = 256 packed tokens per frame; 129 frames -> 33 latent frames
    alpha = sampling.resolution_shift(256, 33)
    assert alpha == pytest.approx(math.sqrt(33))
    ts = sampling.timesteps(50, alpha)
    assert len(ts) == 51 and ts[0] == 1.0 and ts[-1] == 0.0
    # by hand: t = 0.98 -> 5.7446 * 0.98 / (1 + 4.7446 * 0.98) = 0.99646; t = 0.96 -> 0.99282
    assert ts[1] == pytest.approx(0.99646, abs=5e-5)
    assert ts[2] == pytest.approx(0.99282, abs=5e-5)


def test_resolution_line_maps_256_to_1_and_4096_to_3():
    assert sampling.resolution_shift(4096, 1) == pytest.approx(3.0)
    assert sampling.resolution_shift(2176, 4) == pytest.approx(2.0 * 2)  # midpoint 2176 -> 2, times sqrt(4)


def test_euler_step():
    x, v = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0])
    assert torch.allclose(sampling.euler_step(x, v, 0.8, 0.6), torch.tensor([0.9, 2.2]))


def test_text_cfg_hand_values():
    c, u = torch.tensor([2.0]), torch.tensor([0.5])
    assert sampling.text_cfg(c, u, 7.5).item() == pytest.approx(0.5 + 7.5 * 1.5)


def test_image_text_cfg_hand_values():
    c, u, u2 = torch.tensor([3.0]), torch.tensor([1.0]), torch.tensor([-1.0])
    # u2 + g_img (u - u2) + g_txt (c - u) = -1 + 3 * 2 + 7.5 * 2 = 20
    assert sampling.image_text_cfg(c, u, u2, 7.5, 3.0).item() == pytest.approx(20.0)


def test_guidance_needs_the_branches_it_combines():
    B = sampling.Branch
    out = {B.COND: torch.tensor([3.0]), B.UNCOND_TEXT: torch.tensor([1.0]), B.UNCOND_ALL: torch.tensor([-1.0])}
    off = sampling.Guidance(1.0)
    assert off.branches == (B.COND,) and off.combine({B.COND: out[B.COND]}).item() == 3.0
    text = sampling.Guidance(7.5)
    assert text.branches == (B.COND, B.UNCOND_TEXT)
    assert text.combine({b: out[b] for b in text.branches}).item() == pytest.approx(1.0 + 7.5 * 2.0)
    image = sampling.Guidance(7.5, torch.tensor([3.0]))
    assert image.branches == (B.COND, B.UNCOND_TEXT, B.UNCOND_ALL)
    assert image.combine(out).item() == pytest.approx(-1.0 + 3.0 * 2.0 + 7.5 * 2.0)


def test_image_guidance_ramp_hand_values():
    # step 0 of 2: upper = 3.0; frames ramp 1 -> 3; step 1: upper = 2.0; last step upper = 1
    assert sampling.image_guidance_ramp(3.0, 0, 2, 3).tolist() == pytest.approx([1.0, 2.0, 3.0])
    assert sampling.image_guidance_ramp(3.0, 1, 2, 3).tolist() == pytest.approx([1.0, 1.5, 2.0])
    assert sampling.image_guidance_ramp(3.0, 2, 2, 3).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_oscillation_turns_guidance_off_on_odd_steps_from_10():
    assert [s for s in range(16) if sampling.oscillation_off(s, True)] == [11, 13, 15]
    assert not any(sampling.oscillation_off(s, False) for s in range(16))


def test_two_branch_t2v_equals_three_branch_with_zero_image_condition():
    torch.manual_seed(0)
    cfg = tiny_expert_config()
    model = MMDiT(cfg).eval()
    torch.nn.init.normal_(model.cond_in.weight, std=0.1)
    t, h, w = 3, 8, 8
    n = t * 16
    img = torch.randn(1, n, 64)
    ids = image_positions(t, h, w)[None]
    txt_c, txt_u = torch.randn(1, 8, 32), torch.randn(1, 8, 32)
    y_c, y_u = torch.randn(1, 32), torch.randn(1, 32)
    zero_cond = pack(torch.zeros(1, 17, t, h, w))
    ts = torch.tensor([0.7])
    with torch.no_grad():
        c = model(img, ids, txt_c, torch.zeros(1, 8, 3), ts, y_c, zero_cond)
        u = model(img, ids, txt_u, torch.zeros(1, 8, 3), ts, y_u, zero_cond)
        u2 = model(img, ids, txt_u, torch.zeros(1, 8, 3), ts, y_u, zero_cond)
    three = sampling.image_text_cfg(c, u, u2, 7.5, 3.0)
    two = sampling.text_cfg(c, u, 7.5)
    assert torch.allclose(three, two, atol=1e-5)
