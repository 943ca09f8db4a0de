"""Presets load real pipeline classes from save_pretrained directories; missing weights are one
clear error. The pipelines are tiny random ones built in-process (selfcorrect.diffusion.testing)."""

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from selfcorrect.diffusion import presets
from selfcorrect.diffusion.presets import (
    PRESET_DEFAULTS,
    PRESETS,
    PresetError,
    WeightsNotFoundError,
    build_sd15,
    build_sd_turbo,
    build_sdxl,
    build_world,
    load_pipeline,
)
from selfcorrect.diffusion.testing import tiny_sd_pipeline, tiny_sdxl_pipeline
from selfcorrect.errors import SelfcorrectError

TINY_CALL = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "np"}


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline().save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-sdxl")
    tiny_sdxl_pipeline().save_pretrained(path, safe_serialization=True)
    return path


def _generate(pipe, seed=0):
    return pipe("a red circle", generator=torch.Generator().manual_seed(seed), **TINY_CALL).images


def test_registry_lists_the_four_presets_each_with_defaults():
    assert list(PRESETS) == ["world", "sd15", "sdxl", "sd-turbo"]
    assert set(PRESET_DEFAULTS) == set(PRESETS)
    turbo = PRESET_DEFAULTS["sd-turbo"]
    assert (turbo.num_inference_steps, turbo.guidance_scale, turbo.resolution) == (1, 0.0, 512)
    assert turbo.call_kwargs() == {
        "num_inference_steps": 1,
        "guidance_scale": 0.0,
        "height": 512,
        "width": 512,
    }
    assert PRESET_DEFAULTS["world"].source.endswith("selfcorrect/weights/world-t2i")


@pytest.mark.parametrize("builder", [build_world, build_sd15, build_sd_turbo])
def test_sd_builders_load_a_saved_pipeline_and_generate(builder, sd_dir):
    pipe = builder(sd_dir)
    assert type(pipe) is StableDiffusionPipeline
    assert pipe.dtype == torch.float32 and pipe.device.type == "cpu"
    images = _generate(pipe)
    assert images.shape == (1, 32, 32, 3)
    assert (images == _generate(pipe)).all()  # same seed, same image on CPU


def test_sdxl_builder_loads_a_saved_pipeline_and_generates(sdxl_dir):
    pipe = build_sdxl(sdxl_dir)
    assert type(pipe) is StableDiffusionXLPipeline
    assert _generate(pipe).shape == (1, 32, 32, 3)


def test_load_pipeline_records_how_it_loaded(sd_dir):
    loaded = load_pipeline("sd-turbo", sd_dir, dtype="bf16", attention="math")
    assert loaded.pipeline.unet.dtype == torch.bfloat16
    assert (loaded.preset, loaded.source, loaded.dtype) == ("sd-turbo", str(sd_dir), "bfloat16")
    assert (loaded.device, loaded.attention) == ("cpu", "math")
    assert loaded.defaults is PRESET_DEFAULTS["sd-turbo"]


def test_unknown_preset_and_dtype_list_the_choices(sd_dir):
    with pytest.raises(PresetError, match="choose one of: world, sd15, sdxl, sd-turbo"):
        load_pipeline("sd3")
    with pytest.raises(PresetError, match="unknown dtype 'half'"):
        build_sd15(sd_dir, dtype="half")


def test_missing_world_weights_say_where_they_go(tmp_path):
    with pytest.raises(WeightsNotFoundError) as e:
        build_world(tmp_path / "absent")
    assert isinstance(e.value, SelfcorrectError)
    assert f"no world pipeline at {tmp_path / 'absent'}: it is not a directory" in str(e.value)
    assert "python -m selfcorrect.train.world_t2i" in str(e.value)
    assert "--source runs/world-t2i/pipeline" in str(e.value) and str(presets.WORLD_WEIGHTS_DIR) in str(
        e.value
    )


def test_missing_local_directory_says_what_to_download(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="it has no model_index.json") as e:
        build_sd_turbo(tmp_path)
    assert "hf download stabilityai/sd-turbo --local-dir DIR" in str(e.value)
    assert "--source DIR" in str(e.value)


def test_uncached_hub_id_offline_is_one_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # never touch the network here
    with pytest.raises(WeightsNotFoundError, match="downloads are off") as e:
        build_sdxl("stabilityai/stable-diffusion-xl-base-1.0")
    assert e.value.__cause__ is None  # no huggingface_hub traceback behind it
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0 --local-dir DIR" in str(e.value)


def test_unreachable_hub_is_one_clear_error(monkeypatch):
    # What diffusers raises when the Hub cannot be reached: an OSError caused by the hub error.
    def unreachable(source, **kwargs):
        raise OSError(f"Cannot load model {source}: ...") from ConnectionError("Name or service not known")

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", unreachable)
    with pytest.raises(WeightsNotFoundError, match="ConnectionError: Name or service not known") as e:
        build_sd15("someone/their-sd15")
    assert "hf download someone/their-sd15" in str(e.value)


def test_pickle_only_weights_are_refused(tmp_path):
    tiny_sd_pipeline().save_pretrained(tmp_path, safe_serialization=False)  # .bin files
    with pytest.raises(WeightsNotFoundError, match="safetensors weights only"):
        build_sd15(tmp_path)
