"""A request field is declared once (issue 20 item 3): GenerationRequest's `param`s drive the HTTP
body, the CLI flags, the client's form and the queued request. The names below are written out
by hand, as the API and the CLI promise them, so a derivation that drifts fails here."""

import argparse
import dataclasses
import json

import pytest

from pipeline.cli import add_request_arguments, request_values
from pipeline.request import REQUEST_FIELDS, GenerationRequest, ResolvedRequest, RoutingMode
from pipeline.request_fields import param, request_fields, takes_numbers
from pipeline.speed import Speed

# flag -> field, as `paris generate --help` and `paris submit --help` listed them before the derivation
FLAGS = {"--image": "image", "--seed": "seed", "--steps": "num_inference_steps", "--guidance": "guidance_scale",
         "--image-guidance": "image_guidance_scale", "--oscillate": "guidance_oscillation", "--frames": "num_frames",
         "--size": "size", "--fps": "fps", "--negative-prompt": "negative_prompt", "--top-k": "top_k",
         "--routing": "routing", "--expert": "expert", "--schedule": "expert_schedule", "--speed": "speed",
         "--guidance-interval": "guidance_interval"}
# POST /v1/videos, in its order (a 400 names the first invalid field)
BODY = ["prompt", "model", "seconds", "num_frames", "size", "seed", "negative_prompt", "num_inference_steps",
        "guidance_scale", "image_guidance_scale", "guidance_oscillation", "fps", "top_k", "routing", "expert",
        "expert_schedule", "speed", "guidance_interval", "webhook_url"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_request_arguments(p)
    p.add_argument("--seconds")
    p.add_argument("--model")
    return p


def test_the_declaration_reads_as_written():
    @dataclasses.dataclass
    class Scratch:
        text: str = param(required=True, flag="text")
        level: int | None = param()
        mode: RoutingMode | str | None = param(flag="--how", help="the mode")
        picks: list[int] | None = param(listed="comma-separated indices")

    text, level, mode, picks = request_fields(Scratch)
    assert (text.required, text.flag, text.body_type) == (True, "text", str)
    assert (level.required, level.flag, level.body_type) == (False, "--level", int | None)
    assert (mode.flag, mode.help, mode.type) == ("--how", "the mode", RoutingMode)  # the first type named
    assert picks.parse(" 3, 1,,2") == [3, 1, 2]
    with pytest.raises(ValueError, match="^picks must be comma-separated indices$"):
        picks.parse("3,a")
    assert [takes_numbers(t) for t in (int | None, float, list[float] | None, bool | None, str, RoutingMode | None)] \
        == [True, True, True, False, False, False]


def test_the_body_is_the_declaration_plus_the_apis_own_fields():
    from server.api.schemas import CreateVideo

    assert list(CreateVideo.model_fields) == BODY
    for f in REQUEST_FIELDS:
        if not f.file:
            assert CreateVideo.model_fields[f.name].annotation == f.body_type, f.name
    assert CreateVideo.model_fields["routing"].annotation == RoutingMode | None
    assert CreateVideo.model_fields["speed"].annotation == Speed | None
    assert CreateVideo.model_fields["guidance_interval"].annotation == list[float] | None


def test_the_flags_are_the_declaration():
    flags = {a.option_strings[0]: a.dest for a in parser()._actions if a.option_strings}
    assert {f: flags[f] for f in FLAGS} == {f: f.removeprefix("--").replace("-", "_") for f in FLAGS}
    argv = ["a cat", "--image", "first.png", "--seed", "5", "--steps", "4", "--guidance", "3.5", "--image-guidance",
            "1.5", "--oscillate", "--frames", "9", "--size", "32x32", "--fps", "8", "--negative-prompt", "blur",
            "--top-k", "1", "--routing", "schedule", "--expert", "0", "--schedule", "0,1, 0,1", "--speed", "fast",
            "--guidance-interval", "0.1,0.9"]
    values = request_values(parser().parse_args(argv))
    assert set(values) == {f.name for f in dataclasses.fields(GenerationRequest)} == {"prompt", *FLAGS.values()}
    assert values == {"prompt": "a cat", "image": values["image"], "seed": 5, "num_inference_steps": 4,
                      "guidance_scale": 3.5, "image_guidance_scale": 1.5, "guidance_oscillation": True,
                      "num_frames": 9, "size": "32x32", "fps": 8, "negative_prompt": "blur", "top_k": 1,
                      "routing": "schedule", "expert": 0, "expert_schedule": [0, 1, 0, 1], "speed": "fast",
                      "guidance_interval": [0.1, 0.9]}
    assert str(values["image"]) == "first.png"
    unset = request_values(parser().parse_args(["a cat"]))
    assert unset == {name: ("a cat" if name == "prompt" else None) for name in unset}
    with pytest.raises(ValueError, match="^--schedule: expert_schedule must be comma-separated expert indices"):
        request_values(parser().parse_args(["a cat", "--schedule", "0,a"]))


def test_the_client_sends_every_body_field_the_flags_give():
    from client.submit import form_params

    sent = form_params(parser().parse_args(["a cat", "--steps", "4", "--schedule", "0,1", "--image", "f.png"]))
    assert set(sent) == set(BODY) - {"prompt", "webhook_url"}  # the prompt and the first frame go apart
    assert (sent["num_inference_steps"], sent["expert_schedule"], sent["seed"]) == (4, [0, 1], None)


def test_intake_passes_every_body_field_to_the_request():
    from pipeline.manifest import read_manifest
    from server.api.intake import resolve_create
    from server.api.schemas import CreateVideo

    given = {"prompt": "a cat", "num_frames": 9, "size": "32x32", "seed": 5, "negative_prompt": "blur",
             "num_inference_steps": 4, "guidance_scale": 3.5, "image_guidance_scale": 1.5,
             "guidance_oscillation": True, "fps": 8, "top_k": 1, "routing": "schedule",
             "expert_schedule": [0, 1, 0, 1], "speed": "fast", "guidance_interval": [0.1, 0.9]}
    assert set(given) == {f.name for f in REQUEST_FIELDS} - {"image", "expert"}  # expert: with routing fixed
    r = resolve_create(CreateVideo(**given), None, read_manifest("weights/paris-mini"))
    assert {**dataclasses.asdict(r), "size": r.size, "guidance_interval": list(r.guidance_interval)} \
        == {**given, "image": None, "expert": None, "width": 32, "height": 32}
    fixed = resolve_create(CreateVideo(prompt="a cat", routing="fixed", expert=0), None,
                           read_manifest("weights/paris-mini"))
    assert (fixed.routing, fixed.expert) == (RoutingMode.FIXED, 0)


def test_the_queued_request_round_trips_its_typed_fields():
    from pipeline.manifest import read_manifest
    from pipeline.request import resolve

    request = resolve(read_manifest("weights/paris-mini"), GenerationRequest(
        "a cat", seed=1, routing="schedule", expert_schedule=[0] * 4, num_inference_steps=4, speed="balanced",
        guidance_interval=[0.2, 0.9]))
    data = json.loads(request.to_json())
    assert (data["routing"], data["speed"], data["guidance_interval"]) == ("schedule", "balanced", [0.2, 0.9])
    back = ResolvedRequest.from_json(request.to_json())
    assert back == request
    assert (type(back.routing), type(back.speed), type(back.guidance_interval)) == (RoutingMode, Speed, tuple)
