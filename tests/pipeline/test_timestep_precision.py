"""Timesteps reach the expert in the precision Open-Sora v2 feeds its MMDiT (gpu-review-2 B8):
its I2V denoiser builds `t_vec = torch.full((b,), t_curr, dtype=img.dtype)`, the latents' dtype,
which is the model's (bf16 for the released weights), and the router gets the same rounding."""

import torch

from pipeline.engine import expert_inputs
from pipeline.models.expert import MMDiT, image_positions
from pipeline.request_state import RequestState, TextEmbedding
from pipeline.routing import FixedExpert
from pipeline.sampling import Branch
from pipeline.speed import CachePolicy
from pipeline.step_cache import StepCache
from tests.support.tiny_model import tiny_expert_config

T = 0.987654321  # a timestep bf16 cannot hold exactly


def state(config) -> RequestState:
    text = TextEmbedding(torch.zeros(1, 5, config.context_in_dim), torch.zeros(1, config.vec_in_dim))
    return RequestState(job_id="j", request=None, policy=FixedExpert(0), latents=torch.zeros(1, 16, 3, 8, 8),
                        timesteps=[T, 0.0], prompt=text, negative=text, img_ids=image_positions(3, 8, 8)[None],
                        step_cache=StepCache(CachePolicy(), 1))


def test_a_bf16_expert_gets_bf16_timesteps_as_open_sora_feeds_them():
    expert = MMDiT(tiny_expert_config()).to(torch.bfloat16)
    timesteps = expert_inputs(expert, [(state(expert.config), Branch.COND)])[4]
    open_sora = torch.full((1,), T, dtype=torch.bfloat16)
    assert timesteps.dtype == torch.bfloat16 and torch.equal(timesteps, open_sora)


def test_an_fp32_expert_keeps_fp32_timesteps():
    expert = MMDiT(tiny_expert_config())
    timesteps = expert_inputs(expert, [(state(expert.config), Branch.COND)])[4]
    assert timesteps.dtype == torch.float32 and timesteps.item() == torch.tensor(T).item()
