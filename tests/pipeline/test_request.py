"""The queue carries a ResolvedRequest: the JSON round trip is exact, and the model's prompt
template is applied exactly once, by the engine, however often a request is resolved."""

import pytest
import torch
from PIL import Image

from pipeline.engine import Engine
from pipeline.manifest import read_manifest
from pipeline.request import GenerationRequest, ResolvedRequest, RoutingMode, resolve


@pytest.fixture(scope="module")
def manifest(tiny_model_dir):
    return read_manifest(tiny_model_dir)


def test_json_round_trip_is_exact(manifest):
    request = resolve(manifest, GenerationRequest("a red circle", negative_prompt="blurry", seed=3, routing="schedule",
                                                  expert_schedule=[0, 2, 1, 1], guidance_oscillation=True))
    again = ResolvedRequest.from_json(request.to_json())
    assert again == request and again.routing is RoutingMode.SCHEDULE


def test_first_frame_travels_beside_the_json(manifest):
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    request = resolve(manifest, GenerationRequest("a red circle", seed=1, image=image))
    import json

    assert "image" not in json.loads(request.to_json()) and json.loads(request.to_json())["has_image"] is True
    assert ResolvedRequest.from_json(request.to_json(), image).image is image
    with pytest.raises(ValueError):
        ResolvedRequest.from_json(request.to_json())  # the request had a first frame: it must be given


def test_routing_mode_is_one_enum_everywhere(manifest):
    from pipeline.cli import register  # noqa: F401 (the CLI's choices come from the enum)
    from server.api.schemas import CreateVideo

    assert resolve(manifest, GenerationRequest("x", routing="ensemble")).routing is RoutingMode.ENSEMBLE
    assert CreateVideo(prompt="x", routing="fixed").routing is RoutingMode.FIXED


def test_prompt_template_is_applied_once_by_the_engine(tiny_model, monkeypatch):
    seen = []
    monkeypatch.setattr(tiny_model.manifest.sampling, "prompt_template", "a video of {prompt}")
    monkeypatch.setattr("pipeline.engine.encode_t5", lambda model, tok, texts, n: seen.extend(texts) or
                        torch.zeros(len(texts), n, tiny_model.expert_config.context_in_dim))
    request = resolve(tiny_model.manifest, GenerationRequest("a red circle", seed=1))
    twice = resolve(tiny_model.manifest, GenerationRequest(request.prompt, seed=1))
    assert request.prompt == twice.prompt == "a red circle"
    engine = Engine(tiny_model)
    engine.admit("j", twice)
    engine.tick()
    assert "a video of a red circle" in seen and not any("a video of a video of" in t for t in seen)


def test_speed_and_guidance_interval_resolve_from_request_preset_or_model(manifest):
    from pipeline.speed import PRESETS, Speed

    default = resolve(manifest, GenerationRequest("x"))
    assert default.speed is Speed.QUALITY and default.guidance_interval == manifest.sampling.guidance_interval == (0.0, 1.0)
    fast = resolve(manifest, GenerationRequest("x", speed="fast"))
    assert fast.speed is Speed.FAST
    assert fast.guidance_interval == (PRESETS[Speed.FAST].guidance_interval or manifest.sampling.guidance_interval)
    explicit = resolve(manifest, GenerationRequest("x", speed="fast", guidance_interval=[0.2, 0.9]))
    assert explicit.guidance_interval == (0.2, 0.9)  # the field wins over the preset
    assert ResolvedRequest.from_json(explicit.to_json()) == explicit


@pytest.mark.parametrize("field,value", [("speed", "turbo"), ("speed", 3), ("guidance_interval", [0.8, 0.2]),
                                         ("guidance_interval", [0.0, 1.5]), ("guidance_interval", [0.5]),
                                         ("guidance_interval", "0.1,0.5"), ("guidance_interval", [None, 1.0])])
def test_bad_speed_or_interval_names_the_field(manifest, field, value):
    from pipeline.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as err:
        resolve(manifest, GenerationRequest("x", **{field: value}))
    assert err.value.param == field


def test_a_request_queued_before_speed_presets_reads_as_quality(manifest):
    import json

    from pipeline.speed import Speed

    data = json.loads(resolve(manifest, GenerationRequest("x", seed=1)).to_json())
    del data["speed"], data["guidance_interval"]
    old = ResolvedRequest.from_json(json.dumps(data))
    assert old.speed is Speed.QUALITY and old.guidance_interval == (0.0, 1.0)
