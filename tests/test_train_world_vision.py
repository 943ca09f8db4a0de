"""Dense pretraining of the VLM's vision tower: patch targets, loss, the tiny run, and the VLM taking it."""

import json

import pytest
import torch
from safetensors.torch import load_file

from selfcorrect.errors import SelfcorrectError
from selfcorrect.train import world_vision, world_vlm
from selfcorrect.world.scene import COLOURS, SHAPES, SIZES, WorldObject


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    out = tmp_path_factory.mktemp("world-vision")
    argv = ["--profile", "tiny", "--output-dir", str(out), "--no-progress", "--checkpoint-every", "2"]
    return world_vision.main(world_vision.parse_args(argv))


def test_patch_targets_follow_the_token_order_and_keep_small_objects():
    big = WorldObject("square", "blue", "large", (0.5, 0.0, 1.0, 0.5))  # the top right quarter
    small = WorldObject("circle", "red", "small", (0.05, 0.8, 0.15, 0.9))  # 0.8 x 0.8 cells: too little cover
    t = world_vision.patch_targets([big, small], grid=8)
    object_cells = t["object"].view(8, 8)
    assert object_cells[:4, 4:].all() and object_cells[:4, :4].sum() == 0  # rows first, then columns
    blue, square = COLOURS.index("blue"), SHAPES.index("square")
    assert (t["colour"].view(8, 8)[:4, 4:] == blue).all() and (t["shape"].view(8, 8)[:4, 4:] == square).all()
    # the small circle covers no cell by MIN_COVER but owns the cell of its centre (0.1, 0.85)
    assert t["object"].view(8, 8)[6, 0] and t["colour"].view(8, 8)[6, 0] == COLOURS.index("red")
    assert t["object"].sum() == 16 + 1
    assert t["centre"].sum() == 2 and t["centre"].view(8, 8)[2, 6] == 1  # the square's centre (0.75, 0.25)
    assert torch.allclose(t["box"].view(8, 8, 4)[0, 7], torch.tensor(big.box))
    background = ~t["object"]
    assert (t["colour"][background] == len(COLOURS)).all() and (t["size"][background] == len(SIZES)).all()
    assert (t["box"][background] == 0).all()
    empty = world_vision.patch_targets([], grid=4)
    assert not empty["object"].any() and empty["centre"].sum() == 0


def test_dense_loss_is_lowest_for_the_true_labels():
    objects = [WorldObject("triangle", "green", "large", (0.1, 0.1, 0.6, 0.6))]
    targets = {k: v.unsqueeze(0) for k, v in world_vision.patch_targets(objects, grid=4).items()}
    width = sum(world_vision.HEADS.values())

    def outputs_for(t):
        out = torch.full((1, 16, width), -8.0)
        start = 0
        for name in ("colour", "shape", "size"):
            n = world_vision.HEADS[name]
            out[0, torch.arange(16), start + t[name][0]] = 8.0
            start += n
        out[0, :, start] = torch.where(t["centre"][0] > 0, 8.0, -8.0)
        out[0, :, start + 1 :] = t["box"][0]
        return out

    right, parts = world_vision.dense_loss(outputs_for(targets), targets)
    assert right.item() < 0.01 and parts["box"] == 0.0
    wrong = {**targets, "colour": (targets["colour"] + 1) % (len(COLOURS) + 1)}
    assert world_vision.dense_loss(outputs_for(wrong), targets)[0] > right + 10
    shifted = outputs_for(targets)
    shifted[..., -4:] += 0.1  # every box off by 0.1: BOX_WEIGHT * 0.1 on the object patches
    loss, parts = world_vision.dense_loss(shifted, targets)
    assert parts["box"] == pytest.approx(0.1, abs=1e-6)
    assert loss.item() == pytest.approx(right.item() + world_vision.BOX_WEIGHT * 0.1, abs=1e-4)
    metrics = world_vision.probe_metrics(outputs_for(targets), targets)
    assert metrics["colour_accuracy"] == metrics["shape_accuracy"] == metrics["object_accuracy"] == 1.0
    assert metrics["centre_recall"] == metrics["centre_precision"] == 1.0 and metrics["box_l1"] == 0.0


def test_dense_set_is_deterministic_and_matches_the_vlm_preprocessing():
    data = world_vision.DenseSet(4, seed=5, grid=8)
    a, b = data[2], world_vision.DenseSet(4, seed=5, grid=8)[2]
    assert a["pixel_values"].shape == (3, 64, 64) and torch.equal(a["pixel_values"], b["pixel_values"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["pixel_values"], data[3]["pixel_values"])


def test_tiny_run_saves_a_tower_and_a_record_and_resumes(tower, tmp_path):
    record = json.loads((tower / "selfcorrect_training.json").read_text())
    assert record["steps_this_run"] == 3 and 0.0 <= record["held_out"]["colour_accuracy"] <= 1.0
    loaded = world_vision.load_tower(tower, world_vlm.PROFILES["tiny"])
    assert loaded.config.patch_size == world_vlm.PROFILES["tiny"].patch_size
    before = load_file(tower / "model.safetensors")
    argv = ["--profile", "tiny", "--output-dir", str(tower.parent), "--no-progress"]
    world_vision.main(world_vision.parse_args(argv))  # every step done: nothing to train
    again = json.loads((tower / "selfcorrect_training.json").read_text())
    assert again["steps_this_run"] == 0
    after = load_file(tower / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(SelfcorrectError, match="does not fit the profile"):
        world_vision.load_tower(tower, world_vlm.PROFILES["cpu"])
    with pytest.raises(SelfcorrectError, match="no vision tower"):
        world_vision.load_tower(tmp_path, world_vlm.PROFILES["tiny"])


def test_a_trained_vlm_takes_the_tower_and_starts_a_new_projector(tower, tmp_path):
    first = tmp_path / "vlm"
    argv = ["--profile", "tiny", "--output-dir", str(first), "--no-progress", "--eval-turns", "0"]
    world_vlm.main(world_vlm.parse_args(argv))
    model = world_vlm.load_for_training(first / "model", world_vlm.PROFILES["tiny"])
    projector = {k: v.clone() for k, v in model.model.multi_modal_projector.state_dict().items()}
    world_vlm.init_vision_from(model, tower, world_vlm.PROFILES["tiny"], new_projector=True)
    source = world_vision.load_tower(tower, world_vlm.PROFILES["tiny"]).state_dict()
    mine = model.model.vision_tower.state_dict()
    assert all(torch.equal(mine[k], source[k]) for k in source)
    fresh = model.model.multi_modal_projector.state_dict()
    assert all(not torch.equal(fresh[k], projector[k]) for k in projector if k.endswith("weight"))
    assert all((fresh[k] == 0).all() for k in fresh if k.endswith("bias"))
    # ... and through the command line: the record names both starting points
    more = tmp_path / "more"
    argv = ["--profile", "tiny", "--output-dir", str(more), "--no-progress", "--eval-turns", "0"]
    argv += ["--init-model", str(first / "model"), "--init-vision", str(tower), "--vision-lr-scale", "0.3"]
    world_vlm.main(world_vlm.parse_args(argv))
    notes = json.loads((more / "model" / "selfcorrect_training.json").read_text())["config"]["notes"]
    assert notes["init_vision"] == str(tower) and notes["init_model"] == str(first / "model")
    assert world_vlm.PROFILES["tiny"].notes == {}  # the run noted this in its own config only
    # --vision-lr-scale 0 (the default) freezes the tower; the projector and the language model learn.
    frozen = tmp_path / "frozen"
    argv = ["--profile", "tiny", "--output-dir", str(frozen), "--no-progress", "--eval-turns", "0"]
    argv += ["--init-model", str(first / "model"), "--init-vision", str(tower), "--vision-lr-scale", "0"]
    world_vlm.main(world_vlm.parse_args(argv))

    def tower_of(run):
        return world_vlm.load_for_training(
            run / "model", world_vlm.PROFILES["tiny"]
        ).model.vision_tower.state_dict()

    assert all(torch.equal(tower_of(frozen)[k], mine[k].half().float()) for k in mine)  # saved in fp16
    assert not all(torch.equal(tower_of(more)[k], mine[k].half().float()) for k in mine)  # 0.3: it learns
    lm = "language_model.model.norm.weight"
    assert not torch.equal(
        load_file(frozen / "model" / "model.safetensors")[lm],
        load_file(first / "model" / "model.safetensors")[lm],
    )


def test_a_tower_of_another_activation_or_folder_is_refused(tower, tmp_path):
    from selfcorrect.vision.testing import build_tokenizer

    assert world_vlm.vision_activation(tower) == "quick_gelu"  # trained from scratch: CLIP's default
    with pytest.raises(SelfcorrectError, match="neither an open_clip model nor a vision tower"):
        world_vlm.vision_activation(tmp_path)
    tokenizer = build_tokenizer(
        list(world_vlm.SPECIAL_TOKENS), bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    gelu = world_vlm.build_model(world_vlm.PROFILES["tiny"], tokenizer, vision_act="gelu")
    with pytest.raises(SelfcorrectError, match="uses quick_gelu, the model's gelu"):
        world_vlm.init_vision_from(gelu, tower, world_vlm.PROFILES["tiny"])


def test_time_limit_stops_with_a_checkpoint_and_a_rerun_finishes(tmp_path, caplog):
    argv = ["--profile", "tiny", "--output-dir", str(tmp_path), "--no-progress"]
    with caplog.at_level("INFO"):
        assert world_vision.main(world_vision.parse_args([*argv, "--time-limit", "0"])) is None
    assert "stopped after step 1 of 3" in caplog.text and "run the same command again" in caplog.text
    assert [c.name for c in (tmp_path / "checkpoints").iterdir()] == ["vision-0000001"]
    assert not (tmp_path / "tower").exists()
    tower = world_vision.main(world_vision.parse_args(argv))  # resumes at step 1
    assert tower == tmp_path / "tower"
    assert json.loads((tower / "selfcorrect_training.json").read_text())["steps_this_run"] == 2
    assert (
        world_vision.main(world_vision.parse_args([*argv, "--time-limit", "0"])) == tower
    )  # done: nothing to stop
