"""The memory planner: its live-bytes tracker against hand-computed bytes and against real CPU
tensors, the meta-device footprint of Paris 2.0 from the shipped configs, and the plans and
refusals for 141, 80, 48 and 24 GiB."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from client.cli import main as paris
from pipeline.manifest import read_manifest
from pipeline.models.expert import MMDiT, MMDiTConfig
from pipeline.planner.footprint import ClipShape, expert_forward, measure_footprint, peak_and_flops, peak_bytes
from pipeline.planner.meta import meta_module, module_bytes, weight_bytes
from pipeline.planner.plan import GiB, Placement, PlanRefused, Target, default_reserve, device_budget, make_plan

ROOT = Path(__file__).resolve().parents[2]
PARIS_2, PARIS_MINI = ROOT / "weights" / "paris-2", ROOT / "weights" / "paris-mini"
BF16, F32 = 2, 4


# -- the tracker ----------------------------------------------------------------------------------
class TwoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(100, 300), nn.Linear(300, 20)

    def forward(self, x):
        return self.second(F.relu(self.first(x)))


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_peak_of_two_linear_layers_is_the_hand_computed_bytes(device):
    with torch.device(device):
        model = TwoLinear()

    def run():
        x = torch.empty(8, 100)
        model(x)

    # x, first's output and relu's output are alive together; second's output comes after
    # first's output is freed; the weights existed before and are not counted.
    assert peak_bytes(run, device) == 8 * (100 + 300 + 300) * F32


def test_views_and_in_place_ops_allocate_nothing():
    def run():
        x = torch.empty(64, 64)
        x.view(-1)[:10].relu_().mul_(2)
        x.t().unsqueeze(0).expand(3, -1, -1)[1:, :5]

    assert peak_bytes(run) == 64 * 64 * F32


def test_freed_tensors_leave_the_count():
    def run():
        for _ in range(5):
            torch.empty(1000)  # each one freed before the next
        kept = [torch.empty(1000) for _ in range(3)]
        del kept

    assert peak_bytes(run) == 3 * 1000 * F32


@pytest.mark.parametrize("device, kernel_state", [("cpu", 0), ("meta", 16 + 8)])
def test_attention_is_charged_as_the_fused_kernel_with_no_score_matrix(device, kernel_state):
    b, h, length, d = 2, 4, 256, 32

    def run():
        q, k, v = (torch.empty(b, h, length, d, dtype=torch.bfloat16) for _ in range(3))
        F.scaled_dot_product_attention(q, k, v)

    # q, k, v, the output and the kernel's fp32 log-sum-exp (the CUDA flash kernel also returns
    # its RNG seed and offset); an L x L score matrix would be 1 MiB
    assert peak_bytes(run, device) == 4 * b * h * length * d * BF16 + b * h * length * F32 + kernel_state


TINY = MMDiTConfig(vec_in_dim=16, context_in_dim=32, hidden_size=64, num_heads=2, depth=2, depth_single_blocks=2,
                   axes_dim=[8, 12, 12])
TINY_SHAPE = ClipShape(width=64, height=64, frames=9, latent_frames=3, latent_height=8, latent_width=8,
                       image_tokens=48, text_tokens=8)


def tiny_expert(device: str) -> MMDiT:
    torch.manual_seed(0)
    with torch.device(device):
        return MMDiT(TINY).to(torch.bfloat16).eval()


def test_a_tiny_expert_forward_peaks_the_same_on_real_cpu_and_meta_tensors():
    cpu, meta = tiny_expert("cpu"), tiny_expert("meta")
    for rows in (1, 3):
        real = peak_bytes(lambda: expert_forward(cpu, TINY_SHAPE, rows), "cpu")
        assert real == peak_bytes(lambda: expert_forward(meta, TINY_SHAPE, rows))
        assert real == peak_and_flops(lambda: expert_forward(meta, TINY_SHAPE, rows))[0]  # counting FLOPs changes nothing


def test_expert_cost_fits_measurements_at_other_row_counts():
    from pipeline.planner.footprint import measure_expert

    meta = tiny_expert("meta")
    cost = measure_expert(meta, TINY_SHAPE)
    assert cost.activation.at(7) == peak_bytes(lambda: expert_forward(meta, TINY_SHAPE, 7))
    _, flops = peak_and_flops(lambda: expert_forward(meta, TINY_SHAPE, 7))
    assert 7 * cost.flops_per_row.total == flops.get_total_flops()
    assert len(cost.block_bytes) == 4 and sum(cost.block_bytes) + cost.stem_bytes == module_bytes(meta)


# -- Paris 2.0 at real size -----------------------------------------------------------------------
def linear(i: int, o: int) -> int:
    return i * o + o


def expected_paris_2_parameters() -> dict[str, int]:
    """Parameter counts written out from the published architectures."""
    h, m = 3072, 12288  # MM-DiT expert
    stream = linear(h, 6 * h) + 4 * linear(h, h) + 2 * 128 + linear(h, m) + linear(m, h)
    single = 2 * linear(h, h) + linear(h, h + m) + linear(h + m, h) + 2 * 128 + linear(h, 3 * h)
    stem = (linear(64, h) + linear(256, h) + linear(768, h) + 2 * linear(h, h) + linear(68, h) + linear(4096, h)
            + linear(h, 64) + linear(h, 2 * h))
    d, ff = 4096, 10240  # T5-v1.1-XXL encoder: embeddings, 24 gated-GELU layers, relative bias, final norm
    t5 = 32128 * d + 24 * (4 * d * d + 3 * d * ff + 2 * d) + 32 * 64 + d
    c = 768  # CLIP ViT-L/14 text: embeddings, 12 layers, final norm
    clip = 49408 * c + 77 * c + 12 * (4 * linear(c, c) + 4 * c + linear(c, 4 * c) + linear(4 * c, c)) + 2 * c
    # DINOv2-base: cls + mask tokens, 37x37+1 positions, 14x14 patch conv, 12 layers with layer scale
    dino = 2 * c + 1370 * c + linear(3 * 14 * 14, c) + 12 * (4 * c + 4 * linear(c, c) + 2 * c + linear(c, 4 * c) + linear(4 * c, c)) + 2 * c
    r = 768  # DiT-B router: patch, time, text and image embedders, null image, 12 adaLN blocks, norm, head
    router = (linear(64, r) + 3 * linear(r, r) + linear(256, r) + 2 * linear(768, r) + 768
              + 12 * (linear(r, 3 * r) + linear(r, r) + linear(r, 4 * r) + linear(4 * r, r) + linear(r, 6 * r)) + 2 * r + linear(r, 3))
    expert = stem + 19 * 2 * stream + 38 * single
    return {"t5": t5, "clip": clip, "dinov2": dino, "router": router, **{f"expert_{i}": expert for i in range(3)}}


@pytest.fixture(scope="module")
def footprint():
    return measure_footprint(PARIS_2, max_batch=8)  # 256x256, 129 frames: the manifest's largest


def test_weight_bytes_of_paris_2_are_computed_from_its_configs(footprint):
    assert footprint.weight_sources == {n: "config" for n in footprint.weights}
    for name, params in expected_paris_2_parameters().items():
        assert footprint.weights[name] == params * BF16, name
    # the readiness notes' table (GiB): each expert 22.15, T5-XXL 8.87, VAE 0.46, router 0.24, CLIP 0.23, DINOv2 0.16
    table = {"expert_0": 22.15, "t5": 8.87, "vae": 0.46, "router": 0.24, "clip": 0.23, "dinov2": 0.16}
    assert {n: round(footprint.weights[n] / GiB, 2) for n in table} == table


def test_weight_bytes_come_from_safetensors_headers_when_the_folder_has_weights():
    manifest = read_manifest(PARIS_MINI)
    for name, comp in manifest.components.named().items():
        folder = PARIS_MINI / comp.path
        nbytes, source = weight_bytes(comp, folder)
        assert source == "safetensors"
        assert nbytes == module_bytes(meta_module(comp, folder)), name  # headers and config agree


def test_paris_2_footprint_matches_the_readiness_measurements(footprint):
    s, e = footprint.shape, footprint.expert
    assert (s.latent_frames, s.latent_height, s.image_tokens, s.text_tokens) == (33, 32, 8448, 512)
    # 1.97 / 15.8 GiB of activations at 2 / 16 rows; ours also holds the forward's inputs and fp32 output (~10 MB a row)
    inputs_and_output = 8448 * (64 + 68) * BF16 + 8448 * 3 * 8 + 512 * 4096 * BF16 + 512 * 3 * F32 + BF16 + 768 * BF16 + 8448 * 64 * (BF16 + F32)
    assert (e.activation.at(2) - 2 * inputs_and_output) / GiB == pytest.approx(1.97, abs=0.005)
    assert e.activation.at(16) / GiB == pytest.approx(15.87, abs=0.01)
    assert footprint.decode_peak / GiB == pytest.approx(17.78, abs=0.01)
    # 344 TFLOP per 2-row step: 231 in matmuls, 112 in attention
    assert 2 * e.flops_per_row.matmul / 1e12 == pytest.approx(231.4, abs=0.1)
    assert 2 * e.flops_per_row.attention / 1e12 == pytest.approx(112.5, abs=0.1)
    # a double block is 0.68 GB, a single block 0.28 GB
    assert (e.block_bytes[0], e.block_bytes[-1]) == (2 * 339831296, 2 * 141591808)


def plan_at(footprint, gib: int, **kw):
    return make_plan(footprint, Target(gib * GiB, 256 * GiB, max_batch=8, **kw))


def placements(plan) -> dict[str, str]:
    return {n: str(p) for n, p in plan.placement.items()}


def test_141_gib_keeps_everything_resident(footprint):
    plan = plan_at(footprint, 141)
    assert set(plan.placement.values()) == {Placement.RESIDENT}
    assert plan.window_bytes == 0 and plan.rows_per_forward == 24 and plan.decodes_at_once == 1
    assert plan.cache_entries == 256


def test_80_gib_keeps_two_experts_and_streams_the_third_with_t5_on_demand(footprint):
    plan = plan_at(footprint, 80)
    assert plan.streamed == ["expert_2"]
    assert placements(plan) | {"expert_2": "-"} == {"vae": "resident", "router": "resident", "t5": "on demand", "clip": "resident",
                                                     "dinov2": "resident", "expert_0": "resident", "expert_1": "resident", "expert_2": "-"}
    h = 3072  # three double blocks, the stem, and block 0's image modulation (the step cache's signal)
    stem = (linear(64, h) + linear(256, h) + linear(768, h) + 2 * linear(h, h) + linear(68, h) + linear(4096, h)
            + linear(h, 64) + linear(h, 2 * h))
    assert plan.window_bytes == 3 * 2 * 339831296 + (stem + linear(h, 6 * h)) * BF16
    assert plan.decodes_at_once == 1  # at real size one video at a time


def test_48_gib_keeps_one_expert(footprint):
    plan = plan_at(footprint, 48)
    assert plan.streamed == ["expert_1", "expert_2"] and plan.placement["expert_0"] is Placement.RESIDENT
    assert plan.placement["t5"] is Placement.ON_DEMAND
    assert plan.rows_per_forward >= 16  # a full text-to-video batch in one forward


def test_24_gib_streams_every_expert(footprint):
    plan = plan_at(footprint, 24)
    assert plan.streamed == ["expert_0", "expert_1", "expert_2"] and plan.placement["t5"] is Placement.ON_DEMAND
    assert plan.largest_phase == "decode" and plan.rows_per_forward >= 16


@pytest.mark.parametrize("gib", [141, 80, 48, 24])
def test_every_plan_adds_up_and_fits(footprint, gib):
    plan = plan_at(footprint, gib)
    t, e = plan.target, footprint.expert
    resident = sum(footprint.weights[n] for n, p in plan.placement.items() if p is Placement.RESIDENT)
    window = 3 * max(e.block_bytes) + e.stem_bytes + 3072 * 6 * 3072 * BF16 + 6 * 3072 * BF16 if plan.streamed else 0
    embeddings = (plan.cache_entries + 16) * (512 * 4096 + 768) * F32
    image_row = 8448 * 3072 * BF16  # one row's image tokens
    step_cache = plan.step_cache_rows * 2 * image_row
    brought = {n: footprint.weights[n] if plan.placement[n] is Placement.ON_DEMAND else 0 for n in ("t5", "clip")}
    phases = [e.activation.at(plan.rows_per_forward) + (plan.rows_per_forward * image_row if step_cache else 0),
              footprint.decode_peak * plan.decodes_at_once, footprint.router_peak,
              brought["t5"] + brought["clip"] + max(footprint.t5_peak, footprint.clip_peak + 16 * (512 * 4096 + 768) * F32)]
    largest = max(p + max(256 * 2**20, int(0.03 * p)) for p in phases)  # each phase with its allocator headroom
    assert plan.device_bytes == resident + window + embeddings + step_cache + largest <= gib * GiB - t.held_back
    pinned = sum(footprint.weights[n] for n, p in plan.placement.items() if p is not Placement.RESIDENT)
    assert plan.host_bytes == pinned + footprint.weights["expert_0"]
    # every phase keeps at least its headroom, and the one that sets the peak keeps what the plan leaves unused
    assert min(plan.phase_headroom.values()) >= 256 * 2**20
    assert plan.phase_headroom[plan.largest_phase] == plan.budget - plan.device_bytes + (largest - max(phases))


def test_a_budget_below_one_request_is_refused_naming_what_does_not_fit(footprint):
    with pytest.raises(PlanRefused, match=r"16.00 GiB of device memory cannot serve one 256x256, 129 frames request: "
                                          r"decoding one video needs 18.31 GiB \+ 2.11 GiB streaming window \(3 blocks\) \+ 0.70 GiB resident weights.*"
                                          r"\(its bytes plus 0.53 GiB allocator headroom\)"):
        plan_at(footprint, 16)


def test_too_little_host_memory_is_refused(footprint):
    with pytest.raises(PlanRefused, match=r"host memory cannot hold the pinned copies of t5, expert_1, expert_2"):
        make_plan(footprint, Target(48 * GiB, 40 * GiB))


def test_the_device_budget_is_the_free_memory_less_a_reserve():
    assert default_reserve(24 * GiB) == 2 * GiB and default_reserve(80 * GiB) == 4 * GiB
    free = 79 * GiB  # what torch.cuda.mem_get_info reports free on an 80 GB H100
    assert device_budget(free) == free - int(free * 0.05)
    assert device_budget(free, reserve=GiB) == 78 * GiB


def test_paris_plan_prints_the_plan_as_json(capsys):
    assert paris(["plan", "--model", str(PARIS_2), "--device-memory", "80GiB", "--host-memory", "256GiB",
                  "--frames", "33", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["clip"] == "256x256, 33 frames" and plan["streamed"] == ["expert_2"]
    assert plan["components"]["t5"] == {"bytes": 9524621312, "from": "config", "placement": "resident"}
    assert plan["device_bytes"] <= plan["device_budget"] == 76 * GiB


def test_paris_plan_without_a_device_budget_on_a_cpu_machine_says_what_to_give(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the free memory is the default budget")
    assert paris(["plan", "--model", str(PARIS_2)]) == 2
    assert "--device-memory" in capsys.readouterr().err


def test_a_small_model_keeps_everything_resident_and_decodes_videos_together_where_they_fit():
    footprint = measure_footprint(PARIS_MINI, max_batch=8)
    assert set(footprint.weight_sources.values()) == {"safetensors"}
    plan = make_plan(footprint, Target(4 * GiB, 4 * GiB, max_batch=8))
    assert set(plan.placement.values()) == {Placement.RESIDENT}
    # a 24-row forward (11.6 MB) has room for two 5.5 MB decodes, not three: decoding never sets the peak
    assert footprint.expert.activation.at(24) // footprint.decode_peak == 2
    assert plan.decodes_at_once == 2 and plan.largest_phase == "denoise"
