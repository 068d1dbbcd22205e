"""Open-Sora 2.0 as released: the `weights/open-sora-v2` template (one expert, no router), a
folder laid out as it says with the release's file names verifies and generates end to end, and
requests that need a router are refused naming the field."""

import json
from pathlib import Path

import pytest

from client.cli import main as paris
from pipeline.errors import InvalidRequest, ModelFolderError
from pipeline.manifest import Manifest, read_manifest
from pipeline.request import GenerationRequest, RoutingMode, resolve
from tests.support.tiny_model import OPEN_SORA_TEMPLATE, build_tiny_open_sora

PARIS_2 = OPEN_SORA_TEMPLATE.parent / "paris-2"


@pytest.fixture(scope="module")
def open_sora_dir(tmp_path_factory) -> Path:
    return build_tiny_open_sora(tmp_path_factory.mktemp("open-sora") / "model")


def test_the_template_is_one_expert_without_router_with_open_soras_configs():
    manifest = read_manifest(OPEN_SORA_TEMPLATE)
    assert manifest.components.router is None and manifest.components.dinov2 is None
    assert len(manifest.components.experts) == 1
    assert set(manifest.components.named()) == {"t5", "clip", "vae", "expert_0"}
    # Paris 2.0's experts and VAE are Open-Sora 2.0's architecture: the same configs
    for ours, paris in (("expert", "expert_0"), ("vae", "vae"), ("text_encoder", "text_encoder"), ("clip_text", "clip_text")):
        assert json.loads((OPEN_SORA_TEMPLATE / ours / "config.json").read_text()) == \
            json.loads((PARIS_2 / paris / "config.json").read_text())


def test_the_template_names_the_release_files_in_its_readme():
    readme = (OPEN_SORA_TEMPLATE / "README.md").read_text()
    assert "Open_Sora_v2.safetensors" in readme and "hunyuan_vae.safetensors" in readme
    assert "hunyuan_vae.safetensors" in (PARIS_2 / "README.md").read_text()


def test_a_folder_laid_out_as_released_verifies(open_sora_dir, capsys):
    assert (open_sora_dir / "expert" / "Open_Sora_v2.safetensors").is_file()
    assert (open_sora_dir / "vae" / "hunyuan_vae.safetensors").is_file()
    assert paris(["weights", "verify", str(open_sora_dir)]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")


def test_a_missing_release_file_is_reported(open_sora_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(open_sora_dir, broken)
    (broken / "vae" / "hunyuan_vae.safetensors").unlink()
    assert paris(["weights", "verify", str(broken)]) == 1
    assert "vae" in capsys.readouterr().out


def test_the_one_expert_model_generates_end_to_end_without_a_router(open_sora_dir):
    from pipeline.generate import generate
    from pipeline.loader import load_model

    model = load_model(open_sora_dir)
    assert "router" not in model.components
    result = generate(model, GenerationRequest("a red circle moving left", seed=3))
    assert result.frames.shape == (9, 32, 32, 3) and result.frames.std() > 0
    assert result.request.routing is RoutingMode.FIXED and result.request.expert == 0
    assert [s.experts for s in result.trace.steps] == [[0]] * 3
    assert model.residency.stats.device_loads.keys() == {"t5", "clip", "vae", "expert_0"}


def test_routing_that_needs_a_router_is_refused_naming_the_field():
    manifest = read_manifest(OPEN_SORA_TEMPLATE)
    for mode in ("top_k", "ensemble"):
        with pytest.raises(InvalidRequest) as caught:
            resolve(manifest, GenerationRequest("a cat", routing=mode))
        assert caught.value.param == "routing" and "no router" in caught.value.message
    with pytest.raises(InvalidRequest) as caught:
        resolve(manifest, GenerationRequest("a cat", top_k=2))
    assert caught.value.param == "top_k"
    fixed = resolve(manifest, GenerationRequest("a cat", routing="fixed", expert=0))
    assert fixed.routing is RoutingMode.FIXED and fixed.expert == 0
    scheduled = resolve(manifest, GenerationRequest("a cat", num_inference_steps=2, routing="schedule", expert_schedule=[0, 0]))
    assert scheduled.expert_schedule == [0, 0]


def test_models_with_a_router_keep_top_k_as_the_default():
    assert resolve(read_manifest(PARIS_2), GenerationRequest("a cat")).routing is RoutingMode.TOP_K


def test_a_manifest_without_a_router_must_have_one_expert():
    data = json.loads((PARIS_2 / "model.json").read_text())
    del data["components"]["router"]
    with pytest.raises(ValueError, match="without a router has one expert"):
        Manifest.model_validate(data)


def test_the_api_refuses_routing_a_routerless_model_with_a_400(open_sora_dir):
    from server.errors import APIError
    from server.api.intake import resolve_create
    from server.api.schemas import CreateVideo

    manifest = read_manifest(open_sora_dir)
    with pytest.raises(APIError) as caught:
        resolve_create(CreateVideo(prompt="a cat", routing="top_k"), None, manifest)
    assert caught.value.status == 400 and caught.value.param == "routing"
    assert resolve_create(CreateVideo(prompt="a cat"), None, manifest).routing is RoutingMode.FIXED


def test_the_planner_plans_a_model_without_a_router(open_sora_dir):
    from pipeline.planner.footprint import measure_footprint
    from pipeline.planner.plan import GiB, Target, make_plan

    footprint = measure_footprint(open_sora_dir)
    assert footprint.router_peak == 0 and "router" not in footprint.weights
    plan = make_plan(footprint, Target(4 * GiB, 4 * GiB, reserve=0))
    assert set(plan.placement) == {"vae", "t5", "clip", "expert_0"} and plan.resident == list(plan.placement)


def test_paris_plan_measures_the_template_at_real_size(capsys):
    assert paris(["plan", "--model", str(OPEN_SORA_TEMPLATE), "--device-memory", "48GiB", "--host-memory", "256GiB",
                  "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert set(plan["components"]) == {"vae", "t5", "clip", "expert_0"}
    assert plan["components"]["expert_0"]["bytes"] == pytest.approx(22.15 * 2**30, rel=0.01)
