"""The world CLIP: training script (tiny profile), open_clip folder format, loading and scoring."""

import json
import math

import pytest
import torch

from selfcorrect.errors import SelfcorrectError
from selfcorrect.train import world_clip
from selfcorrect.vision import clip
from selfcorrect.vision.vlm import ModelFormatError, ModelNotFoundError
from selfcorrect.world.render import render
from selfcorrect.world.scene import Scene, WorldObject

RED_CIRCLE = Scene((WorldObject("circle", "red", "small", (0.1, 0.4, 0.28, 0.58)),))
BLUE_SQUARE = Scene((WorldObject("square", "blue", "large", (0.6, 0.35, 0.88, 0.63)),))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("world-clip")
    argv = ["--profile", "tiny", "--output-dir", str(out), "--no-progress", "--checkpoint-every", "2"]
    world_clip.main(world_clip.parse_args(argv))
    return out


def test_tiny_run_saves_an_open_clip_folder(trained):
    from safetensors import safe_open

    model_dir = trained / "model"
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == [
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "selfcorrect_training.json",
        "world-clip.json",
    ]
    with safe_open(model_dir / "open_clip_model.safetensors", "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float16}
    hub = json.loads((model_dir / "open_clip_config.json").read_text())
    assert hub["model_cfg"] == json.loads((model_dir / "world-clip.json").read_text())
    assert hub["model_cfg"]["text_cfg"]["vocab_size"] == 49408  # open_clip's own BPE tokenizer
    record = json.loads((model_dir / "selfcorrect_training.json").read_text())
    assert record["profile"] == "tiny" and record["config"]["steps"] == 3
    assert record["val"]["scenes"] == 7 and 0.0 <= record["val"]["accuracy"] <= 1.0


def test_shipped_sizes_stay_under_8_mb():
    import open_clip

    for profile in ("cpu", "gpu"):
        cfg = world_clip.model_config(world_clip.PROFILES[profile])
        model = open_clip.CLIP(**cfg)  # the class open_clip.create_model builds from a registered config
        assert sum(p.numel() for p in model.parameters()) * 2 < 8_000_000, profile


def test_open_clip_loads_it_without_selfcorrect(trained):
    import open_clip

    model_dir = trained / "model"
    image_text = (
        torch.stack([torch.zeros(3, 64, 64), torch.ones(3, 64, 64)]),
        ["a red circle", "two squares"],
    )

    def features(model, tokenizer):
        with torch.no_grad():
            return model.encode_image(image_text[0]), model.encode_text(tokenizer(image_text[1]))

    # 1. The folder, as open_clip reads a Hugging Face Hub repo.
    m1, _, pre1 = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    tok1 = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    # 2. Register the config, then load the weights file by name.
    open_clip.add_model_config(model_dir / "world-clip.json")
    m2, _, pre2 = open_clip.create_model_and_transforms(
        "world-clip", pretrained=str(model_dir / "open_clip_model.safetensors")
    )
    tok2 = open_clip.get_tokenizer("world-clip")
    assert type(tok1).__name__ == type(tok2).__name__ == "SimpleTokenizer"
    assert tok1.context_length == 32
    f1, f2 = features(m1.eval(), tok1), features(m2.eval(), tok2)
    assert all(torch.equal(a, b) for a, b in zip(f1, f2))
    image = render(RED_CIRCLE)
    assert torch.equal(pre1(image), pre2(image)) and pre1(image).shape == (3, 64, 64)
    # selfcorrect's loader is the same call.
    m3, pre3, tok3 = clip.load_world_clip(model_dir)
    assert torch.equal(features(m3, tok3)[1], f1[1])


def test_clip_scores_is_images_by_texts(trained):
    model, preprocess, tokenizer = clip.load_world_clip(trained / "model")
    images = [render(RED_CIRCLE), render(BLUE_SQUARE), render(RED_CIRCLE)]
    texts = ["a red circle", "a blue square", "a red circle", "two crosses"]
    sims = clip.clip_scores(model, preprocess, tokenizer, images, texts)
    assert sims.shape == (3, 4) and sims.dtype == torch.float32
    assert sims.abs().max() <= 1.0 + 1e-5
    assert torch.allclose(sims[0], sims[2]) and torch.allclose(sims[:, 0], sims[:, 2])
    # The same numbers from preprocessed pixels, and from open_clip's own calls.
    pixels = torch.stack([preprocess(im) for im in images])
    assert torch.allclose(clip.clip_scores(model, preprocess, tokenizer, pixels, texts), sims, atol=1e-6)
    with torch.no_grad():
        own = (
            model.encode_image(pixels, normalize=True) @ model.encode_text(tokenizer(texts), normalize=True).T
        )
    assert torch.allclose(own, sims, atol=1e-5)
    from selfcorrect.vision.vlm import VLMInputError

    with pytest.raises(VLMInputError):
        clip.clip_scores(model, preprocess, tokenizer, images, [])
    with pytest.raises(VLMInputError):
        clip.clip_scores(model, preprocess, tokenizer, images, "a red circle")


def test_missing_or_unsafe_weights_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(clip, "WORLD_CLIP_DIR", tmp_path / "weights" / "world-clip")
    with pytest.raises(ModelNotFoundError, match="python -m selfcorrect.train.world_clip") as e:
        clip.load_world_clip()
    assert isinstance(e.value, SelfcorrectError) and "not built yet" in str(e.value)
    with pytest.raises(ModelNotFoundError, match="no open_clip model folder"):
        clip.load_world_clip(tmp_path / "elsewhere")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    config = {"model_cfg": world_clip.model_config(world_clip.PROFILES["tiny"])}
    (pickled / "open_clip_config.json").write_text(json.dumps(config))
    (pickled / "open_clip_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelFormatError, match="safetensors only"):
        clip.load_world_clip(pickled)
    (pickled / "open_clip_model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ModelFormatError, match="cannot load"):
        clip.load_world_clip(pickled)


def test_checkpoints_are_atomic_and_a_rerun_resumes(trained):
    ckpts = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert ckpts == ["clip-0000002", "clip-0000003"]
    weights = trained / "model" / "open_clip_model.safetensors"
    before = weights.read_bytes()
    argv = ["--profile", "tiny", "--output-dir", str(trained), "--no-progress", "--steps", "4"]
    world_clip.main(world_clip.parse_args(argv))
    assert (trained / "checkpoints" / "clip-0000004").exists()
    record = json.loads((trained / "model" / "selfcorrect_training.json").read_text())
    assert record["steps_this_run"] == 1  # resumed at step 3, not started over
    assert weights.read_bytes() != before
    # --time-limit 0: one more step, a checkpoint, no model; the rerun finishes.
    argv = ["--profile", "tiny", "--output-dir", str(trained), "--no-progress", "--steps", "6"]
    saved = weights.read_bytes()
    assert world_clip.main(world_clip.parse_args([*argv, "--time-limit", "0"])) is None
    assert (trained / "checkpoints" / "clip-0000005").exists() and weights.read_bytes() == saved
    assert world_clip.main(world_clip.parse_args(argv)) == trained / "model"
    assert json.loads((trained / "model" / "selfcorrect_training.json").read_text())["steps_this_run"] == 1
    # Another architecture in the same folder is refused, not silently mixed.
    argv = ["--profile", "cpu", "--output-dir", str(trained), "--no-progress", "--steps", "1"]
    with pytest.raises(SelfcorrectError, match="another model config"):
        world_clip.main(world_clip.parse_args(argv))


def test_batches_are_deterministic_and_mask_false_negatives():
    import open_clip

    config = world_clip.PROFILES["tiny"]
    preprocess = open_clip.image_transform(64, is_train=False)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=config.context_length)
    data = world_clip.ClipBatches(config, seed=0, preprocess=preprocess, tokenizer=tokenizer)
    a, b = data[5], data[5]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["images"], data[6]["images"])
    n, k = config.batch_size, config.hard_negatives
    assert a["images"].shape == (n, 3, 64, 64) and a["negatives"].shape == (n, k, 32)
    assert a["same"].shape == (n, n) and not a["same"].diagonal().any()
    # "a circle" is also true of the red circle scene, not the blue square one.
    scenes = [RED_CIRCLE, BLUE_SQUARE, RED_CIRCLE]
    mask = world_clip.same_mask(scenes, ["a small red circle", "a square", "a circle"])
    assert mask.tolist() == [[False, False, True], [False, False, False], [True, False, False]]


def test_category_weights_choose_which_prompts_scenes_are_sampled_for():
    import dataclasses
    import random

    from selfcorrect.world.requirements import CATEGORIES
    from selfcorrect.world.suites import load_suite

    only_position = {c: 0.0 for c in CATEGORIES if c != "position"}
    config = dataclasses.replace(
        world_clip.PROFILES["tiny"], prompt_share=1.0, category_weights=only_position
    )
    data = world_clip.ClipBatches(config, seed=0, preprocess=None, tokenizer=None)
    position = {p.prompt for p in load_suite("train", "position")}
    texts = [data.example(random.Random(i))[1] for i in range(30)]
    assert all(t in position for t in texts)
    even = dataclasses.replace(config, category_weights={})
    texts = [world_clip.ClipBatches(even, 0, None, None).example(random.Random(i))[1] for i in range(60)]
    assert 0 < sum(t in position for t in texts) < 30

    typo = dataclasses.replace(config, category_weights={"positon": 4.0})
    with pytest.raises(SelfcorrectError, match="unknown prompt categories"):
        world_clip.ClipBatches(typo, 0, None, None)


def test_text_separation_loss_hinges_on_caption_negative_cosines():
    caption = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # (B=2, D=2)
    near = torch.tensor([math.cos(0.2), math.sin(0.2)])  # cosine 0.980 with caption 0
    far = torch.tensor([0.0, -1.0])  # cosine 0 with caption 0, -1 with caption 1
    negatives = torch.stack([torch.stack([near, far]), torch.stack([far, near])])  # (2, K=2, 2)
    # caption 0: relu(0.980 - 0.8) + 0; caption 1: 0 + relu(sin(0.2) - 0.8) = 0
    expected = (math.cos(0.2) - 0.8) / 2
    assert world_clip.text_separation_loss(caption, negatives, margin=0.8).item() == pytest.approx(expected)
    mask = torch.tensor([[False, True], [True, True]])  # caption 0's near negative is padding
    assert world_clip.text_separation_loss(caption, negatives, mask, margin=0.8).item() == 0.0
    assert world_clip.text_separation_loss(caption, negatives, margin=0.99).item() == 0.0


def test_image_tower_round_trips_through_a_transformers_tower(tmp_path):
    import open_clip
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from selfcorrect.train.world_vlm import init_vision_from_open_clip

    config = world_clip.PROFILES["tiny"]
    cfg = world_clip.model_config(config)
    source, fresh = open_clip.CLIP(**cfg), open_clip.CLIP(**cfg)
    tower = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=config.vision_width,
            intermediate_size=4 * config.vision_width,
            num_hidden_layers=config.vision_layers,
            num_attention_heads=config.vision_width // config.head_width,
            patch_size=config.patch_size,
            image_size=64,
            hidden_act="gelu",
        )
    )
    init_vision_from_open_clip(tower, source)
    tower.save_pretrained(tmp_path / "tower")
    proj = fresh.visual.proj.detach().clone()
    world_clip.init_visual_from_tower(fresh, tmp_path / "tower")
    want, got = source.visual.state_dict(), fresh.visual.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want if k != "proj")
    assert torch.equal(got["proj"], proj)  # no counterpart: keeps its own initialisation

    with pytest.raises(SelfcorrectError, match="no vision tower"):
        world_clip.init_visual_from_tower(fresh, tmp_path)
    deeper = open_clip.CLIP(**{**cfg, "vision_cfg": {**cfg["vision_cfg"], "layers": 2}})
    with pytest.raises(SelfcorrectError, match="does not fit"):
        world_clip.init_visual_from_tower(deeper, tmp_path / "tower")


def test_contrastive_loss_matches_open_clip_and_hand_numbers():
    import open_clip

    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    ours = world_clip.contrastive_loss(images, texts, scale)
    assert ours.item() == pytest.approx(open_clip.ClipLoss()(images, texts, scale).item(), rel=1e-6)

    # Two pairs in 1-D: image i . text j = +1 on the diagonal, -1 off it; one hard negative at 0.
    im, tx = torch.tensor([[1.0], [1.0]]), torch.tensor([[1.0], [-1.0]])
    # image 0: texts (1, -1); image 1: texts (1, -1) but its match is text 1 (score -1).
    base = world_clip.contrastive_loss(im, tx, torch.tensor(1.0))
    lse = math.log(math.e + math.exp(-1))
    i2t = ((lse - 1) + (lse + 1)) / 2
    t2i = ((math.log(2 * math.e) - 1) + (math.log(2 * math.exp(-1)) + 1)) / 2
    assert base.item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    negative = torch.zeros(2, 1, 1)  # scores 0 against both images
    with_neg = world_clip.contrastive_loss(
        im, tx, torch.tensor(1.0), negative, torch.tensor([[True], [False]])
    )
    lse0 = math.log(math.e + math.exp(-1) + 1)
    assert with_neg.item() == pytest.approx((((lse0 - 1) + (lse + 1)) / 2 + t2i) / 2, rel=1e-6)
    # Masking text 1 for image 0 (and image 0 for text 1) removes it from both softmaxes.
    same = torch.tensor([[False, True], [False, False]])
    masked = world_clip.contrastive_loss(im, tx, torch.tensor(1.0), same=same)
    t2i_masked = ((math.log(2 * math.e) - 1) + 0.0) / 2  # text 1 now sees only image 1
    assert masked.item() == pytest.approx((((0.0) + (lse + 1)) / 2 + t2i_masked) / 2, rel=1e-6)


def test_evaluate_hard_negatives_reports_by_kind(trained):
    model, preprocess, tokenizer = clip.load_world_clip(trained / "model")
    result = world_clip.evaluate_hard_negatives(model, preprocess, tokenizer, "test", limit=14, seed=3)
    assert result["scenes"] == 14 and 9 <= result["negatives_per_scene"] <= 10
    assert set(result["by_kind"]) <= {"attribute", "count", "relation"} and "attribute" in result["by_kind"]
    assert all(0.0 <= v <= 1.0 for v in [result["accuracy"], *result["by_kind"].values()])
    assert set(result["text_cosine_by_kind"]) == set(result["pairwise_by_kind"])
    assert all(-1.0 - 1e-6 <= v <= 1.0 + 1e-6 for v in result["text_cosine_by_kind"].values())
    assert result == world_clip.evaluate_hard_negatives(
        model, preprocess, tokenizer, "test", limit=14, seed=3
    )


def test_init_clip_starts_a_run_from_a_saved_model(trained, tmp_path):
    import dataclasses

    import open_clip

    cfg = world_clip.model_config(world_clip.PROFILES["tiny"])
    fresh, saved = open_clip.CLIP(**cfg), clip.load_world_clip(trained / "model").model
    assert not all(
        torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), saved.state_dict().values())
    )
    world_clip.init_from_clip(fresh, cfg, trained / "model")
    for (name, a), b in zip(fresh.state_dict().items(), saved.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # a saved model of other sizes is refused, naming what differs
    other = world_clip.model_config(dataclasses.replace(world_clip.PROFILES["tiny"], text_layers=2))
    with pytest.raises(SelfcorrectError, match="another config .*text_cfg"):
        world_clip.init_from_clip(open_clip.CLIP(**other), other, trained / "model")
    argv = ["--profile", "tiny", "--output-dir", str(tmp_path / "more"), "--no-progress"]
    argv += ["--init-clip", str(trained / "model")]
    with pytest.raises(SelfcorrectError, match="not both"):
        world_clip.main(world_clip.parse_args([*argv, "--init-vision", str(tmp_path)]))
    out = world_clip.main(world_clip.parse_args([*argv, "--lr", "1e-4", "--warmup", "2"]))
    config = json.loads((out / "selfcorrect_training.json").read_text())["config"]
    assert config["notes"]["init_clip"] == str(trained / "model")
    assert (config["lr"], config["warmup"]) == (1e-4, 2)
