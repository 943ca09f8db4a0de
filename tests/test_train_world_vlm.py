"""The world VLM training script (tiny profile): tokenizer, chat template, labels, saving, loading."""

import json
import shutil

import pytest
import torch
from PIL import Image

from selfcorrect.train import world_vlm
from selfcorrect.world.conversations import ConversationSet, Example


def _example(task: str, turns: list[tuple[str, str]], n_images: int = 1) -> Example:
    images = [Image.new("RGB", (64, 64), (40 * k, 120, 200)) for k in range(n_images)]
    messages = []
    for k, (user, assistant) in enumerate(turns):
        content = [{"type": "image"}] * n_images if k == 0 else []
        messages.append({"role": "user", "content": [*content, {"type": "text", "text": user}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": assistant}]})
    return Example(images, messages, task)


EXAMPLES = [
    _example("vqa", [("Is there a red circle?", "Yes"), ("How many squares are there?", "2")]),
    _example("ground", [("Find every blue cross. Answer with bounding boxes.", "[10, 20, 35, 45]")]),
    _example(
        "image_pairwise", [("Which image matches the prompt better?", "The better image: first\nIt does.")], 2
    ),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("world-vlm")
    argv = ["--profile", "tiny", "--output-dir", str(out), "--no-progress", "--checkpoint-every", "2"]
    world_vlm.main(world_vlm.parse_args(argv))
    return out


@pytest.fixture(scope="module")
def processor(trained):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(trained / "model")


def test_template_renders_llava_turns_and_the_generation_prompt():
    messages = EXAMPLES[0].messages
    full = world_vlm.render_chat(messages)
    assert full == (
        "USER: <image>\nIs there a red circle? ASSISTANT: Yes</s>USER: How many squares are there? ASSISTANT: 2</s>"
    )
    prompt = world_vlm.render_chat(messages[:1], add_generation_prompt=True)
    assert prompt.endswith("ASSISTANT:") and full.startswith(prompt + " Yes</s>")
    two = world_vlm.render_chat(EXAMPLES[2].messages[:1], add_generation_prompt=True)
    assert two.startswith("USER: <image>\n<image>\nWhich")


def test_tokenizer_is_byte_level_with_single_token_answers(processor):
    tok = processor.tokenizer
    for word in ("Yes", "No", "0", "42", "100"):
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    ids = tok("Ünïcode ✓ hexagon", add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids and tok.decode(ids).strip() == "Ünïcode ✓ hexagon"
    assert tok("Yes").input_ids[0] == tok.bos_token_id


def test_labels_are_exactly_the_standalone_answer_tokens(processor):
    """Training labels == each answer tokenized on its own (as VLM.score does) + </s>, per turn."""
    tok = processor.tokenizer
    batch = world_vlm.Collator(processor)(EXAMPLES)
    assert batch["pixel_values"].shape == (4, 3, 64, 64)
    assert batch["tasks"] == ["vqa", "ground", "image_pairwise"]
    image_id = tok.convert_tokens_to_ids("<image>")
    tokens_per_image = (64 // world_vlm.PROFILES["tiny"].patch_size) ** 2
    for row, example in enumerate(EXAMPLES):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        assert int((ids == image_id).sum()) == tokens_per_image * len(example.images)
        expected = []
        for message in example.messages[1::2]:
            expected += tok(message["content"][0]["text"], add_special_tokens=False).input_ids
            expected.append(tok.eos_token_id)
        assert labels[labels != world_vlm.IGNORE].tolist() == expected
        # labelled positions hold their own input ids; padding is never labelled
        assert torch.equal(ids[labels != world_vlm.IGNORE], labels[labels != world_vlm.IGNORE])
        assert not (labels[batch["attention_mask"][row] == 0] != world_vlm.IGNORE).any()


def test_assistant_loss_matches_cross_entropy_by_hand():
    logits = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, 3, 1, -100], [-100, -100, -100, 4]])
    loss, by_task = world_vlm.assistant_loss(logits, labels, ["a", "b"])
    picks = [
        logits[0, 0].log_softmax(-1)[3],
        logits[0, 1].log_softmax(-1)[1],
        logits[1, 2].log_softmax(-1)[4],
    ]
    assert loss.item() == pytest.approx(-sum(p.item() for p in picks) / 3, rel=1e-5)
    assert by_task["a"][1] == 2 and by_task["b"][0] == pytest.approx(-picks[2].item(), rel=1e-5)


def test_batch_plan_is_deterministic_and_follows_the_weights():
    plan = world_vlm.batch_plan(300, [0.6, 0.3, 0.1], seed=0)
    assert plan == world_vlm.batch_plan(300, [0.6, 0.3, 0.1], seed=0)
    assert plan[:100] == world_vlm.batch_plan(100, [0.6, 0.3, 0.1], seed=0)  # longer runs extend it
    for k in range(3):
        assert [n for b, n in plan if b == k] == list(range(sum(b == k for b, _ in plan)))
    assert sum(b == 0 for b, _ in plan) > sum(b == 2 for b, _ in plan)


def test_tiny_run_saves_a_plain_transformers_llava(trained, processor):
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    model_dir = trained / "model"
    with safe_open(model_dir / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in model_dir.iterdir())
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.vision_feature_layer == -1
    text = processor.apply_chat_template(EXAMPLES[0].messages[:1], add_generation_prompt=True)
    inputs = processor(text=text, images=EXAMPLES[0].images, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    record = json.loads((model_dir / "selfcorrect_training.json").read_text())
    assert record["profile"] == "tiny" and record["steps_this_run"] == 3
    assert record["val"]["turns"] == 4 and 0.0 <= record["val"]["exact_match"] <= 1.0
    buckets = record["length_buckets"]
    assert len(buckets["buckets"]) == 2 and sorted(sum(buckets["buckets"], [])) == sorted(buckets["shares"])


def test_vlm_backend_chats_and_scores(trained):
    from selfcorrect.vision.vlm import VLM

    vlm = VLM.from_pretrained(trained / "model")
    example = EXAMPLES[0]
    [answer] = vlm.chat([example.images], [example.messages[:1]], max_new_tokens=4)
    assert isinstance(answer, str)
    logp = vlm.score(
        [example.images[0]] * 2, ["Is there a red circle?", "Is there a blue square?"], ["Yes", "No"]
    )
    assert logp.shape == (2, 2) and (logp <= 0).all() and torch.isfinite(logp).all()


def copy_of_run(trained, tmp_path, steps: int) -> tuple:
    """A copy of the trained run's processor and checkpoints, and the argv that goes on to ``steps``."""
    out = tmp_path / "run"
    shutil.copytree(trained / "processor", out / "processor")
    shutil.copytree(trained / "checkpoints", out / "checkpoints")
    return out, [
        "--profile",
        "tiny",
        "--output-dir",
        str(out),
        "--no-progress",
        "--steps",
        str(steps),
        "--eval-turns",
        "0",
    ]


def test_rerun_resumes_from_the_last_checkpoint(trained, tmp_path):
    out, argv = copy_of_run(trained, tmp_path, 4)
    world_vlm.main(world_vlm.parse_args(argv))
    record = json.loads((out / "model" / "selfcorrect_training.json").read_text())
    assert record["steps_this_run"] == 1  # steps 3 -> 4 only
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["vlm-0000003", "vlm-0000004"]


def test_init_model_continues_from_saved_weights_with_its_tokenizer_and_mix(trained, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "more"
    argv = ["--profile", "tiny", "--output-dir", str(out), "--no-progress", "--eval-turns", "0"]
    argv += ["--init-model", str(trained / "model"), "--mix", "vqa=1,ground=0.5,caption=0", "--lr", "1e-9"]
    world_vlm.main(world_vlm.parse_args(argv))
    before = load_file(trained / "model" / "model.safetensors")
    after = load_file(out / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    # lr 1e-9 for 3 steps: the weights are the saved ones (to fp16 precision), not a new model
    assert all(torch.allclose(before[k].float(), after[k].float(), atol=1e-3) for k in before)
    assert (out / "model" / "tokenizer.json").read_text() == (
        trained / "model" / "tokenizer.json"
    ).read_text()
    record = json.loads((out / "model" / "selfcorrect_training.json").read_text())
    notes = record["config"]["notes"]
    assert notes["init_model"] == str(trained / "model") and notes["init_model_steps"] == 3
    assert notes["mix"]["caption"] == 0 and record["config"]["lr"] == 1e-9
    assert "caption" not in record["length_buckets"]["shares"]


def test_init_model_of_other_sizes_and_bad_mixes_are_clear_errors(trained, tmp_path):
    from selfcorrect.errors import SelfcorrectError

    argv = ["--profile", "cpu", "--output-dir", str(tmp_path), "--init-model", str(trained / "model")]
    with pytest.raises(
        SelfcorrectError, match="does not fit the profile: vision_hidden 32 \\(profile: 128\\)"
    ):
        world_vlm.main(world_vlm.parse_args(argv))
    for bad in ("vqa=x", "colour=1", "vqa=-1"):
        with pytest.raises(SystemExit):
            world_vlm.parse_args(["--output-dir", str(tmp_path), "--mix", bad])
    assert world_vlm.parse_mix("vqa=0.5")["vqa"] == 0.5


def test_real_conversations_go_through_the_collator(processor):
    data = ConversationSet(8, seed=3)
    batch = world_vlm.Collator(processor)([data[i] for i in range(8)])
    assert batch["input_ids"].shape == batch["labels"].shape
    assert ((batch["labels"] != world_vlm.IGNORE).sum(1) > 0).all()  # every conversation has answers


def test_vision_tower_starts_exactly_from_the_world_clip():
    from selfcorrect.errors import SelfcorrectError
    from selfcorrect.vision.clip import load_world_clip
    from selfcorrect.vision.testing import build_tokenizer

    clip = load_world_clip().model
    tokenizer = build_tokenizer(
        list(world_vlm.SPECIAL_TOKENS), bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    model = world_vlm.build_model(world_vlm.PROFILES["cpu"], tokenizer, vision_act="gelu")
    world_vlm.init_vision_from_open_clip(model.model.vision_tower, clip)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.model.vision_tower(pixels).pooler_output @ clip.visual.proj
        theirs = clip.encode_image(pixels)
    assert torch.allclose(ours, theirs, atol=1e-4)
    tiny = world_vlm.build_model(world_vlm.PROFILES["tiny"], tokenizer, vision_act="gelu")
    with pytest.raises(SelfcorrectError, match="does not fit"):
        world_vlm.init_vision_from_open_clip(tiny.model.vision_tower, clip)
    quick = world_vlm.build_model(world_vlm.PROFILES["cpu"], tokenizer)  # quick_gelu: another network
    with pytest.raises(SelfcorrectError, match="activation quick_gelu"):
        world_vlm.init_vision_from_open_clip(quick.model.vision_tower, clip)


def test_time_limit_stops_with_a_checkpoint_that_a_rerun_resumes(trained, tmp_path):
    out, argv = copy_of_run(trained, tmp_path, 6)
    assert world_vlm.main(world_vlm.parse_args([*argv, "--time-limit", "0"])) is None  # one step, then stop
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["vlm-0000003", "vlm-0000004"]
    assert not (out / "model").exists()
    assert world_vlm.main(world_vlm.parse_args(argv)) == out / "model"
    assert json.loads((out / "model" / "selfcorrect_training.json").read_text())["steps_this_run"] == 2
