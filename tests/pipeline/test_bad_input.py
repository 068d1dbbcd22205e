import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import InvalidRequest, ModelFolderError
from pipeline.loader import load_model
from pipeline.manifest import read_manifest
from pipeline.request import GenerationRequest, resolve
from pipeline.verify import verify_model_folder
from weights import WEIGHTS_DIR


@pytest.fixture(scope="module")
def manifest(tiny_model_dir):
    return read_manifest(tiny_model_dir)


@pytest.mark.parametrize("field, value, param", [
    ("num_frames", 10, "num_frames"),
    ("num_frames", 21, "num_frames"),  # 4k+1 but above the model's 17
    ("size", "36x32", "size"),  # not a multiple of 8 (this model's VAE x patch)
    ("size", "64x64", "size"),  # a multiple, but not one of the model's sizes
    ("size", "big", "size"),
    ("prompt", "", "prompt"),
    ("num_inference_steps", 0, "num_inference_steps"),
    ("top_k", 4, "top_k"),
    ("fps", 0, "fps"),
    ("seed", -1, "seed"),
])
def test_bad_request_names_the_field(manifest, field, value, param):
    request = GenerationRequest("a red circle")
    setattr(request, field, value)
    with pytest.raises(InvalidRequest) as err:
        resolve(manifest, request)
    assert err.value.param == param


def test_schedule_must_cover_every_step(manifest):
    with pytest.raises(InvalidRequest) as err:
        resolve(manifest, GenerationRequest("x", routing="schedule", expert_schedule=[0, 1], num_inference_steps=4))
    assert err.value.param == "expert_schedule"
    with pytest.raises(InvalidRequest):
        resolve(manifest, GenerationRequest("x", routing="fixed", expert=3))


def test_defaults_fill_and_seed_is_chosen(manifest):
    r = resolve(manifest, GenerationRequest("a red circle"))
    assert (r.num_frames, r.width, r.height, r.num_inference_steps) == (9, 32, 32, 4)
    assert isinstance(r.seed, int)


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_component_and_missing_file_are_clear_errors(tiny_model_dir, tmp_path):
    broken = copy_model(tiny_model_dir, tmp_path / "m")
    shutil.rmtree(broken / "expert_1")
    (broken / "router" / "model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="expert_1: component folder missing"):
        load_model(broken)
    problems = verify_model_folder(broken)
    assert any("expert_1" in p and "folder missing" in p for p in problems)
    assert any("router" in p and "no *.safetensors" in p for p in problems)


def test_wrong_tensor_shape_is_listed_by_verify_and_refused_by_load(tiny_model_dir, tmp_path):
    broken = copy_model(tiny_model_dir, tmp_path / "m")
    path = broken / "expert_0" / "model.safetensors"
    state = load_file(str(path))
    state["txt_in.weight"] = torch.zeros(32, 31)
    state["final_layer.linear.bias"] = state["final_layer.linear.bias"].half()
    save_file(state, str(path))
    problems = verify_model_folder(broken)
    assert any("txt_in.weight has shape [32, 31], expected [32, 32]" in p for p in problems)
    assert any("final_layer.linear.bias has dtype torch.float16" in p for p in problems)
    model = load_model(broken)
    with pytest.raises(ModelFolderError, match="txt_in.weight"):
        model.get("expert_0")


def test_verify_ok_on_a_complete_folder(tiny_model_dir):
    assert verify_model_folder(tiny_model_dir) == []


def test_verify_paris2_template_reports_missing_files_plainly():
    proc = subprocess.run([sys.executable, "-m", "client.cli", "weights", "verify", str(WEIGHTS_DIR / "paris-2")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "expert_0" in proc.stdout and "no *.safetensors weight files" in proc.stdout
    assert "weights/paris-2/text_encoder: no *.safetensors weight files" in proc.stdout  # its config.json ships


def edit_manifest(folder, section: str, **changes) -> None:
    path = folder / "model.json"
    manifest = json.loads(path.read_text())
    manifest[section].update(changes)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("limits, named", [
    ({"temporal_compression": 8}, "limits.temporal_compression is 8, but the VAE compresses time by 4"),
    # this VAE compresses space by 4 and the expert packs 2x2 patches: 8 pixels per token
    ({"size_multiple": 4, "sizes": ["32x32"]}, "limits.size_multiple is 4, not a multiple of the VAE's spatial "
                                               "compression x the expert's patch size (4 x 2 = 8)"),
    ({"sizes": ["32x32", "40x36"]}, "limits.sizes: 40x36 is not a multiple of limits.size_multiple (8)"),
])
def test_limits_that_disagree_with_the_vae_are_refused_at_load_and_listed_by_verify(tiny_model_dir, tmp_path, limits,
                                                                                   named):
    broken = copy_model(tiny_model_dir, tmp_path / "m")
    edit_manifest(broken, "limits", **limits)
    with pytest.raises(ModelFolderError) as err:
        load_model(broken)
    assert err.value.problems == [f"{broken / 'model.json'}: {named}"]
    assert verify_model_folder(broken) == err.value.problems


def test_geometry_comes_from_the_vae_config(tiny_model):
    vae = json.loads((tiny_model.folder / "vae" / "config.json").read_text())
    assert (tiny_model.latent_channels, tiny_model.spatial_compression, tiny_model.temporal_compression) == (
        vae["latent_channels"], vae["spatial_compression_ratio"], vae["temporal_compression_ratio"]) == (16, 4, 4)


def test_unknown_dtype_is_a_model_folder_error_and_every_dtype_maps_to_torch(tiny_model_dir, tmp_path):
    from pipeline.checkpoint import TORCH_DTYPES
    from pipeline.manifest import DType

    assert set(TORCH_DTYPES) == set(DType)
    broken = copy_model(tiny_model_dir, tmp_path / "m")
    edit_manifest(broken, "components", router={"class": "DiTRouter", "path": "router", "dtype": "fp64"})
    with pytest.raises(ModelFolderError, match="components.router.dtype"):
        load_model(broken)


def test_bad_manifest_is_a_model_folder_error(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ModelFolderError):
        load_model(tmp_path)
