"""`selfcorrect generate` and `selfcorrect eval t2i` on a tiny world pipeline."""

import json

import numpy as np
import pytest
from PIL import Image

from selfcorrect.cli import main
from selfcorrect.diffusion.generate import NonFiniteLatentsError, generate
from selfcorrect.diffusion.presets import load_pipeline


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_image_and_record(tiny_world_pipeline, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys,
        "generate",
        "two red circles and a blue square",
        "-o",
        out,
        "--source",
        tiny_world_pipeline,
        "--steps",
        "2",
        "--seed",
        "7",
        "--rounds",
        "0",
    )
    assert code == 0, err
    record = json.loads((out / "trace.json").read_text())
    assert record["seed"] == 7 and record["steps"] == 2 and record["preset"] == "world"
    assert record["attention"] == "sdpa" and record["rounds"] == []
    assert record["timings"]["generate_seconds"] > 0
    assert Image.open(out / record["image"]).size == (64, 64)
    assert "attention sdpa" in stdout


def test_same_seed_same_image(tiny_world_pipeline, tmp_path, capsys):
    images = []
    for seed, name in ((3, "a"), (3, "b"), (4, "c")):
        assert (
            run(
                capsys,
                "generate",
                "a circle",
                "-o",
                tmp_path / name,
                "--source",
                tiny_world_pipeline,
                "--steps",
                "2",
                "--seed",
                seed,
                "--rounds",
                "0",
            )[0]
            == 0
        )
        images.append(np.asarray(Image.open(tmp_path / name / "image.png")))
    assert np.array_equal(images[0], images[1])
    assert not np.array_equal(images[0], images[2])


def test_batch_neighbours_do_not_change_an_image(tiny_world_pipeline):
    pipe = load_pipeline("world", tiny_world_pipeline).pipeline
    alone = generate(pipe, ["a circle"], [5], steps=2, guidance=3.0, size=64)[0]
    batched = generate(pipe, ["a square", "a circle"], [9, 5], steps=2, guidance=3.0, size=64)[1]
    assert alone.latents.shape == (4, 16, 16)
    # The untrained tiny model makes huge latents (~1e4): compare relatively.
    assert (alone.latents - batched.latents).abs().max() <= 1e-5 * alone.latents.abs().max()


def test_nan_latents_are_refused_and_nothing_is_saved(tiny_world_pipeline, tmp_path, monkeypatch, capsys):
    pipe = load_pipeline("world", tiny_world_pipeline).pipeline
    real_forward = pipe.unet.forward

    def broken(*args, **kwargs):
        out = real_forward(*args, **kwargs)  # the pipeline asks for a tuple (return_dict=False)
        out[0].fill_(float("nan"))
        return out

    monkeypatch.setattr(pipe.unet, "forward", broken)
    with pytest.raises(NonFiniteLatentsError, match="step 1 of 2"):
        generate(pipe, ["a circle"], [0], steps=2, guidance=3.0, size=64)
    # Through the CLI: exit 2, one message, no image.
    monkeypatch.setattr("selfcorrect.diffusion.presets.load_pipeline", lambda *a, **k: _Loaded(pipe))
    code, _, err = run(
        capsys, "generate", "a circle", "-o", tmp_path / "nan", "--steps", "2", "--rounds", "0"
    )
    assert code == 2 and "NaN" in err and not (tmp_path / "nan" / "image.png").exists()


class _Loaded:
    def __init__(self, pipe):
        from selfcorrect.diffusion.presets import PRESET_DEFAULTS

        self.pipeline, self.preset, self.source, self.dtype, self.device, self.attention = (
            pipe,
            "world",
            "x",
            "float32",
            "cpu",
            "sdpa",
        )
        self.defaults = PRESET_DEFAULTS["world"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["a hexagon"], "hexagon"),
        (["a circle", "--preset", "dalle"], "unknown preset"),
        (["a circle", "--steps", "0"], "--steps"),
        (["a circle", "--size", "4000"], "--size"),
        (["a circle", "--guidance", "-1"], "--guidance"),
        (["a circle", "--rounds", "-2"], "rounds"),
        (["a circle", "--attention", "xformers"], "xformers"),
    ],
)
def test_bad_input_exits_2(tiny_world_pipeline, tmp_path, capsys, argv, message):
    code, _, err = run(capsys, "generate", *argv, "-o", tmp_path / "x", "--source", tiny_world_pipeline)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "x" / "image.png").exists()


def test_missing_weights_say_what_to_do(tmp_path, capsys):
    code, _, err = run(capsys, "generate", "a circle", "-o", tmp_path / "x", "--source", tmp_path / "nowhere")
    assert code == 2 and "nowhere" in err


def test_output_that_is_a_file_exits_2(tiny_world_pipeline, tmp_path, capsys):
    (tmp_path / "file").write_text("keep me")
    code, _, err = run(
        capsys, "generate", "a circle", "-o", tmp_path / "file", "--source", tiny_world_pipeline
    )
    assert code == 2 and (tmp_path / "file").read_text() == "keep me"


def test_eval_t2i_reports_every_category(tiny_world_pipeline, tmp_path, capsys):
    path = tmp_path / "t2i.json"
    code, out, err = run(
        capsys,
        "eval",
        "t2i",
        "--source",
        tiny_world_pipeline,
        "--steps",
        "1",
        "--seeds",
        "1",
        "--limit",
        "2",
        "--json",
        path,
    )
    assert code == 0, err
    result = json.loads(path.read_text())
    assert set(result["categories"]) == {
        "single_object",
        "two_objects",
        "counting",
        "colors",
        "position",
        "color_attribution",
        "negation",
    }
    assert all(c["n"] == 2 for c in result["categories"].values())
    assert set(result["heldout"]["categories"]) <= set(result["categories"])
    assert len(result["records"]) == 14 + 2 * len(result["heldout"]["categories"])
    assert 0.0 <= result["overall"] <= 1.0
    assert result["command"].startswith("selfcorrect eval t2i") and result["model"]["attention"] == "sdpa"
    assert "| split |" in path.with_suffix(".md").read_text()
