"""TLDR: perturbations with word labels, token labels, the loss and metrics, the critic, training.

Labels and numbers are checked against hand-worked examples; the critic and the training script
run on a tiny random LLaVA of the real transformers class (plumbing, not quality).
"""

import json
import math
import random

import pytest
import torch
from PIL import Image

from selfcorrect.critics.base import TokenCritic
from selfcorrect.critics.tldr import (
    TldrCritic,
    TldrInputError,
    TokenHead,
    correct_caption,
    flagged_spans,
    load_head,
    look_ahead,
    response_states,
    save_head,
    tokenize_response,
)
from selfcorrect.critics.verdicts import TokenVerdict
from selfcorrect.errors import SelfcorrectError
from selfcorrect.train.tldr import IGNORE, auroc, best_threshold, evaluate_rewards, token_bce, token_labels
from selfcorrect.world.data import QA
from selfcorrect.world.grammar import parse_prompt
from selfcorrect.world.perturb import (
    PERTURBATION_TYPES,
    PerturbationSet,
    caption_perturbations,
    changed_spans,
    in_style,
    perturb_answer,
    word_spans,
)
from selfcorrect.world.requirements import evaluate
from selfcorrect.world.scene import WorldObject, relative_position

# A small red circle left of a large blue square.
CIRCLE = WorldObject("circle", "red", "small", (0.05, 0.41, 0.23, 0.59))
SQUARE = WorldObject("square", "blue", "large", (0.60, 0.35, 0.90, 0.65))
CAPTION = "a small red circle left of a large blue square"


def wrong_words(p) -> list[str]:
    return [p.text[s:e] for s, e in p.spans]


# ------------------------------------------------------------------------------- perturbations


def test_changed_spans_marks_replaced_inserted_and_deleted_words():
    assert changed_spans("a red circle", "an orange circle") == ((0, 2), (3, 9))
    assert changed_spans("a circle", "a red circle") == ((2, 5),)  # inserted
    assert changed_spans("a red circle", "a circle") == ((2, 8),)  # deleted: the next word
    assert changed_spans("A photo of a cross", "a photo of a cross") == ()  # case-insensitive
    swapped = "a large blue square left of a small red circle"
    plain = [swapped[s:e] for s, e in changed_spans(CAPTION, swapped)]
    slots = [swapped[s:e] for s, e in changed_spans(CAPTION, swapped, anchor=("left", "of"))]
    assert slots == ["large", "blue", "square", "small", "red", "circle"]
    assert "left" not in slots and plain  # the relation itself is never labelled in a swap


def test_each_caption_type_labels_exactly_the_changed_words():
    assert relative_position(CIRCLE.box, SQUARE.box) == {"left of"}
    found = caption_perturbations([CIRCLE, SQUARE], CAPTION, random.Random(0), n=1000, absent=30)
    by_text = {p.text: p for p in found}
    expected = {
        "a small red circle above a large blue square": ("spatial", ["above"]),
        "a small red circle right of a large blue square": ("spatial", ["right"]),
        "a large blue square left of a small red circle": (
            "spatial",
            ["large", "blue", "square", "small", "red", "circle"],
        ),
        "a small red circle left of a large green square": ("attribute", ["green"]),
        "a small red circle left of a small blue square": ("attribute", ["small"]),
        "a small blue circle left of a large red square": ("binding", ["blue", "red"]),
        "a large red circle left of a small blue square": ("binding", ["large", "small"]),
        "a small red circle left of a large blue triangle": ("object", ["triangle"]),
        "a small red circle left of two large blue squares": ("counting", ["two", "squares"]),
        "a small orange circle left of a large blue square": ("small_object", ["orange"]),
        "a small red triangle left of a large blue square": ("small_object", ["triangle"]),
    }
    for text, (kind, words) in expected.items():
        assert text in by_text, text
        assert (by_text[text].kind, wrong_words(by_text[text])) == (kind, words), text
    added = [p for p in found if p.edit.startswith("add absent")]
    assert added and all(p.kind == "counterfactual" for p in added)
    for p in added:  # only the inserted phrase, e.g. "a small green cross", not "and"
        words = wrong_words(p)
        assert words[0] in ("a", "an") and words[-1] in ("circle", "square", "triangle", "cross")
        assert " ".join(words) in p.text and "and" not in words
    assert {p.kind for p in found} == set(PERTURBATION_TYPES)
    for p in found:  # every perturbation is false for the scene, and labels some word
        assert p.spans
        assert not all(r.passed for r in evaluate([CIRCLE, SQUARE], parse_prompt(p.text)))


def test_existence_flip_is_counterfactual():
    found = caption_perturbations(
        [CIRCLE, SQUARE], "a red circle and a blue square", random.Random(1), n=1000
    )
    flip = [p for p in found if p.text == "no red circles and a blue square"]
    assert flip and flip[0].kind == "counterfactual" and wrong_words(flip[0]) == ["no", "circles"]


def test_negatives_keep_the_form_of_their_caption_style():
    # a shape edit that puts a group out of canonical order, an absent group before a present one
    assert in_style("a red circle, a blue square and a green triangle", "canonical") is False  # no sizes
    assert in_style("a photo of a red circle, a blue square and a green triangle", "geneval")
    assert not in_style("a photo of a red circle, a blue cross and a green triangle", "geneval")
    assert not in_style("a photo of no red circles and a blue square", "geneval")
    assert in_style("a photo of a red circle and no blue squares", "geneval")
    assert not in_style("a photo of a small red circle", "geneval")  # geneval names no sizes
    assert in_style("A picture of a blue cross and a circle.", "natural")  # any order
    assert not in_style("A picture of no crosses and a circle.", "natural")
    triangle = WorldObject("triangle", "green", "large", (0.1, 0.1, 0.4, 0.4))
    cross = WorldObject("cross", "orange", "small", (0.6, 0.6, 0.8, 0.8))
    text = "a photo of a green triangle and an orange cross"
    found = caption_perturbations(
        [triangle, cross], text, random.Random(0), style="geneval", n=1000, absent=30
    )
    assert found and all(in_style(p.text, "geneval") for p in found)
    assert "a photo of a green triangle and an orange circle" not in {p.text for p in found}  # out of order
    added = [p for p in found if p.edit.startswith("add absent")]
    assert added
    for p in added:  # rendered in canonical order; exactly the new phrase is labelled
        assert " ".join(wrong_words(p)) in p.text and wrong_words(p)[-1] in (
            "circle",
            "square",
            "triangle",
            "cross",
        )
        assert " ".join(wrong_words(p)[1:]) == p.edit.removeprefix("add absent ")


def test_answer_perturbations_label_the_whole_answer():
    rng = random.Random(0)
    cases = {
        QA("how many circles are there?", "1", "count"): "counting",
        QA("is there a red circle?", "yes", "existence"): "counterfactual",
        QA("is the circle left of the square?", "no", "relation"): "spatial",
        QA("what colour is the square?", "blue", "colour"): "attribute",
        QA("what shape is the red object?", "circle", "shape"): "object",
        QA("where is the circle relative to the square?", "left of", "where"): "spatial",
    }
    for item, kind in cases.items():
        p = perturb_answer(item, rng)
        assert p.kind == kind and p.spans == ((0, len(p.text)),)
        assert p.text.lower() != item.answer
    assert perturb_answer(QA("is there a red circle?", "yes", "existence"), rng).text == "No"


def test_perturbation_set_is_seeded_paired_and_covers_every_type():
    data = PerturbationSet(60, "train")
    true, wrong = data[3]
    again = data[3]
    assert (true.response, wrong.response, wrong.spans) == (
        again[0].response,
        again[1].response,
        again[1].spans,
    )
    assert true.image is wrong.image and true.prompt == wrong.prompt
    assert true.correct and true.kind == "none" and not wrong.correct and wrong.kind in PERTURBATION_TYPES
    assert data[3][0].response != PerturbationSet(60, "test")[3][0].response
    kinds = {data[i][1].kind for i in range(len(data))}
    assert kinds == set(PERTURBATION_TYPES)
    for i in range(20):
        true, wrong = data[i]
        if true.task == "caption":  # a true caption holds on the image's objects
            assert all(r.passed for r in evaluate(list(true.objects), parse_prompt(true.response)))
        assert all(0 <= s < e <= len(wrong.response) for s, e in wrong.spans)
    with pytest.raises(ValueError, match="split"):
        PerturbationSet(3, "dev")


# --------------------------------------------------------------------------------- pure parts


def test_token_labels_from_offsets():
    assert token_labels([(0, 1), (1, 5), (5, 12)], [(2, 5)]) == [1, 0, 1]
    assert token_labels([(0, 1), (1, 5)], []) == [1, 1]


def test_token_labels_through_a_real_tokenizer():
    from selfcorrect.vision.testing import build_tokenizer

    tokenizer = build_tokenizer(["<pad>"], pad_token="<pad>")  # byte-level: a word is several tokens
    text = "a small red circle"
    ids, offsets = tokenize_response(tokenizer, text)
    assert len(ids) > 4
    labels = token_labels(offsets, [(8, 11)])
    assert "".join(text[s:e] for (s, e), y in zip(offsets, labels) if y == 0) == "red"
    assert "".join(text[s:e] for s, e in offsets) == text


def test_token_bce_hand_computed():
    logits = torch.tensor([0.0, 2.0, -1.0])
    labels = torch.tensor([1, 0, IGNORE])
    expected = (math.log(2) + math.log(1 + math.e**2)) / 2  # -log sigmoid(0), -log(1 - sigmoid(2))
    assert token_bce(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    assert token_bce(logits, torch.full((3,), IGNORE)).item() == 0.0


def test_auroc_by_ranks():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(3.5 / 4)  # a tie counts a half
    assert auroc([0.9, 0.1], [0, 1]) == 0.0
    assert auroc([0.3, 0.4], [1, 1]) is None


def test_best_threshold_and_evaluation():
    assert best_threshold([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == (0.5, 1.0)
    responses = [
        {"labels": [1, 1, 1], "kind": "none", "task": "caption", "source": "rendered"},
        {"labels": [1, 0, 1], "kind": "attribute", "task": "caption", "source": "rendered"},
        {"labels": [0], "kind": "counting", "task": "vqa", "source": "degraded"},
    ]
    rewards = [[0.9, 0.8, 0.7], [0.3, 0.2, 0.9], [0.6]]
    m = evaluate_rewards(responses, rewards, threshold=0.5)
    # response 1 flagged at its first token (a correct one), response 3 missed, response 0 clean
    assert m["response_accuracy"] == pytest.approx(2 / 3)
    assert m["detection_rate"] == 0.5 and m["false_alarm_rate"] == 0.0 and m["first_flag_wrong"] == 0.0
    # correct tokens 0.9 0.8 0.7 0.3 0.9 vs wrong 0.2 0.6: 5 + 4 of 10 pairs in order
    assert m["token_auroc"] == pytest.approx(0.9)
    assert m["by_kind"]["counting"]["accuracy"] == 0.0 and m["by_task"]["caption"]["accuracy"] == 1.0
    assert m["pair_accuracy"] is None  # no pair ids
    responses[0]["pair"], responses[1]["pair"] = 7, 7  # 0.2 < 0.7: the perturbed one is lower
    assert evaluate_rewards(responses, rewards, threshold=0.5)["pair_accuracy"] == 1.0


def test_flagged_spans_merge_runs_and_trim_spaces():
    text = "a red circle and a square"
    offsets = [(0, 1), (1, 5), (5, 12), (12, 16), (16, 18), (18, 25)]
    assert flagged_spans(text, offsets, [False, True, True, False, False, True]) == [(2, 12), (19, 25)]
    assert flagged_spans(text, offsets, [False] * 6) == []


# ------------------------------------------------------------------------------ critic, script


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from selfcorrect.vision.testing import build_tiny_vlm
    from selfcorrect.vision.vlm import VLM

    path = build_tiny_vlm("llava", tmp_path_factory.mktemp("tldr") / "llava")
    return path, VLM.from_pretrained(path)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    from selfcorrect.train import tldr

    out = tmp_path_factory.mktemp("tldr-run")
    args = tldr.parse_args(
        ["--profile", "tiny", "--output-dir", str(out), "--backbone", str(tiny[0]), "--no-progress"]
    )
    return out, tldr.main(args), args


def test_tiny_profile_trains_saves_and_reloads(tiny, trained):
    path, vlm = tiny
    out, head_dir, _ = trained
    assert head_dir == out / "head"
    record = json.loads((out / "tldr_eval.json").read_text())
    for key in ("token_auroc", "response_accuracy", "detection_rate", "false_alarm_rate", "by_kind"):
        assert key in record["test"]
    assert record["reload_max_abs_diff"] < 1e-2
    assert "hidden" in record["ablations"] and "correction" in record
    assert (head_dir / "README.md").is_file() and (head_dir / "head.safetensors").stat().st_size < 10_000
    critic = TldrCritic.from_pretrained(head_dir, vlm=vlm)
    assert isinstance(critic, TokenCritic) and critic.kinds == frozenset({"tokens"})
    image = Image.new("RGB", (64, 64), (200, 200, 200))
    verdict = critic.reward_tokens(image, "Describe the image.", "a small red circle")
    assert isinstance(verdict, TokenVerdict) and verdict.critic == "tldr"
    assert len(verdict.tokens) == len(verdict.rewards) > 0
    assert "".join(verdict.tokens) == "a small red circle"
    assert all(0.0 <= r <= 1.0 for r in verdict.rewards)
    assert verdict.threshold == json.loads((head_dir / "config.json").read_text())["threshold"]
    assert all(0 <= s < e <= len("a small red circle") for s, e in verdict.spans)
    json.dumps(verdict.to_dict())
    # the backbone named in the config is loaded when none is given
    assert TldrCritic.from_pretrained(head_dir).vlm.model.config.get_text_config().hidden_size == 32


def test_rerun_resumes_from_cache_and_checkpoint(trained):
    from selfcorrect.train import tldr

    out, head_dir, args = trained
    before = (head_dir / "head.safetensors").read_bytes()
    features = {p.name: p.stat().st_mtime_ns for p in (out / "features").iterdir()}
    tldr.main(args)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "features").iterdir()} == features
    assert (head_dir / "head.safetensors").read_bytes() == before
    # features of another backbone (same name, retrained weights) are refused, never reused
    cache = out / "features" / "train-0.safetensors"
    stamp = json.loads(cache.with_name(cache.name + ".json").read_text())["stamp"]
    assert tldr.load_cache(cache, stamp) is not None
    with pytest.raises(SelfcorrectError, match="new --output-dir"):
        tldr.load_cache(cache, {**stamp, "fingerprint": "0123456789abcdef"})


def test_batched_rewards_equal_single_and_logprobs_match_scoring(tiny):
    _, vlm = tiny
    head = TokenHead(32, "hidden+logprob")
    torch.nn.init.normal_(head.net.weight, std=0.3)
    critic = TldrCritic(vlm, head)
    red, blue = Image.new("RGB", (64, 64), (220, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 220))
    items = [(red, "Describe the image.", "a red circle"), (blue, "Is there a square?", "No, there is none")]
    many = critic.reward_tokens_many(*zip(*items))
    for (image, prompt, response), verdict in zip(items, many):
        assert critic.reward_tokens(image, prompt, response).rewards == pytest.approx(
            verdict.rewards, abs=1e-5
        )
    [states] = response_states(vlm, [red], ["Describe the image."], ["a red circle"])
    scored = vlm.score_details([red], ["Describe the image."], ["a red circle"]).token_logprobs[0][0]
    assert states.logprob[:, 0] == pytest.approx(scored, abs=1e-4)


def test_look_ahead_reads_the_next_tokens_of_the_same_response_only():
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])  # two responses: 2 tokens, then 3
    got = look_ahead(x, [2, 3], 2)
    # [own, next, next but one, flag next, flag next but one]
    expected = torch.tensor(
        [
            [1.0, 2.0, 0.0, 1.0, 0.0],
            [2.0, 0.0, 0.0, 0.0, 0.0],
            [3.0, 4.0, 5.0, 1.0, 1.0],
            [4.0, 5.0, 0.0, 1.0, 0.0],
            [5.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    assert torch.equal(got, expected)
    assert look_ahead(x, [5], 0) is x
    with pytest.raises(ValueError, match="lengths"):
        look_ahead(x, [2, 2], 1)


def test_head_with_look_ahead_saves_reloads_and_reads_later_tokens(tiny, tmp_path):
    _, vlm = tiny
    head = TokenHead(32, "hidden+logprob", mlp=8, ahead=2)
    assert head.in_features == (32 + 3) * 3 + 2
    save_head(head, tmp_path / "head", backbone="world", threshold=0.5)
    loaded, config = load_head(tmp_path / "head")
    assert (loaded.ahead, config["ahead"]) == (2, 2)
    torch.nn.init.normal_(loaded.net[0].weight, std=0.3)
    critic = TldrCritic(vlm, loaded)
    image = Image.new("RGB", (64, 64), (220, 30, 30))
    one = critic.reward_tokens(image, "Describe the image.", "a red circle").rewards
    other = critic.reward_tokens(image, "Describe the image.", "a blue circle").rewards
    # "a" reads the next tokens too: the colour after it moves its reward
    assert one[0] != pytest.approx(other[0], abs=1e-6)
    own = TldrCritic(vlm, TokenHead(32, "hidden+logprob", mlp=8))  # TLDR's: the token's own state
    assert own.reward_tokens(image, "Describe the image.", "a red circle").rewards[0] == pytest.approx(
        own.reward_tokens(image, "Describe the image.", "a blue circle").rewards[0], abs=1e-5
    )
    with pytest.raises(ValueError, match="ahead"):
        TokenHead(32, "hidden", ahead=-1)


def test_bad_input_is_one_clear_error(tiny, tmp_path):
    from selfcorrect.vision.vlm import ModelFormatError, ModelNotFoundError

    _, vlm = tiny
    critic = TldrCritic(vlm, TokenHead(32, "hidden"))
    image = Image.new("RGB", (64, 64))
    for empty in ("", "   "):
        with pytest.raises(TldrInputError, match="empty"):
            critic.reward_tokens(image, "Describe the image.", empty)
    with pytest.raises(TldrInputError, match="one image per prompt"):
        critic.reward_tokens_many([image], ["a", "b"], ["x", "y"])
    with pytest.raises(ModelFormatError, match="hidden size"):
        TldrCritic(vlm, TokenHead(64, "hidden"))
    with pytest.raises(ModelNotFoundError, match="train one"):
        TldrCritic.from_pretrained(tmp_path / "nothing", vlm=vlm)
    save_head(TokenHead(32, "hidden", mlp=8), tmp_path / "head", backbone="world", threshold=0.4)
    head, config = load_head(tmp_path / "head")
    assert (head.mlp, config["threshold"], config["backbone"]) == (8, 0.4, "world")
    (tmp_path / "head" / "config.json").write_text("{}")
    with pytest.raises(ModelFormatError):
        load_head(tmp_path / "head")


def test_correct_caption_regenerates_from_the_first_flagged_token(tiny):
    _, vlm = tiny
    critic = TldrCritic(vlm, TokenHead(32, "hidden"))
    image = Image.new("RGB", (64, 64), (220, 30, 30))
    text = "a red circle"
    clean = TokenVerdict(["a", " red", " circle"], [0.9, 0.9, 0.9])
    assert correct_caption(critic, vlm, image, "Describe the image.", text, verdict=clean) == text
    flagged = TokenVerdict(["a", " red", " circle"], [0.9, 0.1, 0.9], spans=[(2, 5)])
    fixed = correct_caption(
        critic, vlm, image, "Describe the image.", text, verdict=flagged, max_new_tokens=5
    )
    assert fixed.startswith("a") and not fixed.startswith("a red")  # "r" is banned right after "a "
    hinted = correct_caption(
        critic, vlm, image, "Describe the image.", text, verdict=flagged, mode="fix", max_new_tokens=3
    )
    assert isinstance(hinted, str)
    with pytest.raises(ValueError, match="mode"):
        correct_caption(critic, vlm, image, "Describe the image.", text, verdict=flagged, mode="rewrite")
    # without a verdict the critic is asked
    assert isinstance(correct_caption(critic, vlm, image, "Describe the image.", text, max_new_tokens=3), str)


def test_word_spans_cover_words_and_punctuation():
    assert [w for w, _, _ in word_spans("A photo of a cross, and a square.")] == [
        "A", "photo", "of", "a", "cross", ",", "and", "a", "square", ".",
    ]  # fmt: skip
