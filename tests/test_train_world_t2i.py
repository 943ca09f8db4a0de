"""The world text-to-image training script (tiny profile) and its tokenizer."""

import json

import pytest
import torch

from selfcorrect.train import world_t2i
from selfcorrect.train.tokenizer import build_vocab_and_merges, build_world_tokenizer

WORDS = ["a", "two", "red", "circle", "circles", "and", "blue", "square", "cross", "crosses"]


def test_tokenizer_makes_world_words_single_tokens():
    tok = build_world_tokenizer(WORDS)
    ids = tok("Two red circles and a blue square.").input_ids
    assert tok.convert_ids_to_tokens(ids) == [
        "<|startoftext|>",
        "two</w>",
        "red</w>",
        "circles</w>",
        "and</w>",
        "a</w>",
        "blue</w>",
        "square</w>",
        ".</w>",
        "<|endoftext|>",
    ]
    # Words outside the vocabulary still tokenize, byte by byte: no unknown tokens.
    pieces = tok.convert_ids_to_tokens(tok("a hexagon").input_ids)
    assert pieces[1:-1] == ["a</w>", "h", "e", "x", "a", "g", "o", "n</w>"]
    assert tok.unk_token_id not in tok("a hexagon").input_ids[1:-1]


def test_tokenizer_round_trips_through_save_pretrained(tmp_path):
    from transformers import AutoTokenizer

    tok = build_world_tokenizer(WORDS)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "two blue crosses and a red circle"
    assert loaded(text).input_ids == tok(text).input_ids
    assert loaded.model_max_length == tok.model_max_length


def test_vocabulary_is_deterministic_and_validated():
    assert build_vocab_and_merges(WORDS) == build_vocab_and_merges(list(reversed(WORDS)))
    with pytest.raises(ValueError, match="lower-case"):
        build_vocab_and_merges(["Circle"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i")
    world_t2i.main(
        world_t2i.parse_args(
            ["--profile", "tiny", "--output-dir", str(out), "--no-progress", "--checkpoint-every", "2"]
        )
    )
    return out


def test_tiny_run_saves_a_plain_diffusers_pipeline(trained):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(trained / "pipeline", torch_dtype=torch.float32)
    assert type(pipe.tokenizer).__name__ == "CLIPTokenizer"
    assert pipe.vae.config.scaling_factor != 0.18215  # measured from the data, not SD's constant
    image = pipe(
        "a red circle", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (64, 64)
    record = json.loads((trained / "pipeline" / "selfcorrect_training.json").read_text())
    assert record["profile"] == "tiny" and record["config"]["unet_steps"] == 3
    # Weights are fp16 safetensors only: no pickles.
    files = [p.name for p in (trained / "pipeline").rglob("*") if p.is_file()]
    assert any(f.endswith(".safetensors") for f in files)
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".ckpt")) for f in files)


def test_checkpoints_are_atomic_and_a_rerun_resumes(trained, capsys):
    ckpts = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert ckpts == ["unet-0000002", "unet-0000003", "vae-0000002", "vae-0000003"]
    assert not list((trained / "checkpoints").glob(".tmp-*"))
    before = (trained / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    # Longer schedule on the same output dir: resumes from step 3 instead of starting over.
    world_t2i.main(
        world_t2i.parse_args(
            ["--profile", "tiny", "--output-dir", str(trained), "--no-progress", "--unet-steps", "4"]
        )
    )
    assert (trained / "checkpoints" / "unet-0000004").exists()
    after = (trained / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert before != after


def test_vae_loss_weights_object_pixels():
    # 2x2 image: gray background (0.0) with one object pixel (1.0); reconstruction all background.
    images = torch.zeros(1, 3, 2, 2)
    images[0, :, 1, 1] = 1.0
    recon = torch.zeros_like(images)
    # Object error 1 in 3 channels at weight 10 -> 30; weights 10 + 1 + 1 + 1 = 13 per channel, x3 = 39.
    assert world_t2i.vae_loss(recon, images).item() == pytest.approx(30 / 39)
    # An error on the background counts 10x less than the same error on the object.
    off_background = images.clone()
    off_background[0, :, 0, 1] = 1.0
    assert world_t2i.vae_loss(off_background, images).item() == pytest.approx(3 / 39)


def test_training_scripts_turn_bad_input_into_a_message_and_exit_code_2(tmp_path, capsys):
    from selfcorrect.train import world_clip

    argv = ["--profile", "tiny", "--output-dir", str(tmp_path / "run"), "--init-vision", str(tmp_path)]
    assert world_t2i.run_script(world_clip.main, world_clip.parse_args, argv) == 2
    assert "holds no vision tower" in capsys.readouterr().err

    def broken(args):
        raise KeyError("a bug")

    with pytest.raises(KeyError):  # a bug keeps its traceback
        world_t2i.run_script(broken, world_clip.parse_args, argv)
    assert world_t2i.run_script(lambda args: None, world_clip.parse_args, argv) == 0


def test_bad_flags_are_usage_errors(tmp_path, capsys):
    from selfcorrect.train import world_vlm

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for flags, message in (
        (["--output-dir", str(a_file)], "is a file, not a folder"),
        (["--output-dir", str(tmp_path), "--time-limit", "-5"], "must be 0 or more"),
        (["--output-dir", str(tmp_path), "--vision-lr-scale", "-1"], "must be 0 or more"),
        (["--output-dir", str(tmp_path), "--vision-lr-scale", "x"], "invalid number"),
    ):
        with pytest.raises(SystemExit) as exit_:
            world_vlm.parse_args(["--profile", "tiny", *flags])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    args = world_vlm.parse_args(["--profile", "tiny", "--output-dir", str(tmp_path), "--time-limit", "0"])
    assert args.time_limit == 0.0 and args.output_dir == tmp_path
