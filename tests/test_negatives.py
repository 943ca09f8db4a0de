"""Hard negative captions: one edit away from a true caption, false for the scene."""

import random

import pytest

from selfcorrect.errors import PromptError
from selfcorrect.world.grammar import parse_prompt
from selfcorrect.world.negatives import (
    NEGATIVE_KINDS,
    SPECIALISING_EDITS,
    HardNegative,
    edited_requirements,
    hard_negatives,
    one_edit_variants,
)
from selfcorrect.world.requirements import evaluate
from selfcorrect.world.sampling import sample_scene
from selfcorrect.world.scene import Scene, WorldObject
from selfcorrect.world.suites import load_suite, mentions_heldout

# A small red circle clearly left of a large blue square (and nothing above or below the other).
SCENE = Scene(
    (
        WorldObject("circle", "red", "small", (0.10, 0.40, 0.28, 0.58)),
        WorldObject("square", "blue", "large", (0.60, 0.35, 0.88, 0.63)),
    )
)
CAPTION = "a photo of a red circle left of a blue square"


def holds(scene, text):
    return all(r.passed for r in evaluate(scene.objects, parse_prompt(text)))


def test_every_negative_is_false_and_one_edit_away():
    negatives = hard_negatives(SCENE, CAPTION, n=100, rng=random.Random(0))
    texts = [h.text for h in negatives]
    assert len(texts) == len(set(texts)) and CAPTION not in texts
    assert not any(holds(SCENE, t) for t in texts)
    by_text = {h.text: (h.kind, h.edit) for h in negatives}
    # One of each kind of edit, in the caption's own wording.
    assert by_text["a photo of a blue circle left of a red square"] == (
        "attribute",
        "swap colour circle / square",
    )
    assert by_text["a photo of a red square left of a blue circle"] == (
        "attribute",
        "swap shape circle / square",
    )
    assert by_text["a photo of a red circle left of a blue cross"] == ("attribute", "shape square -> cross")
    assert by_text["a photo of a large red circle left of a blue square"][0] == "attribute"
    assert by_text["a photo of two red circles left of a blue square"] == ("count", "circle count a -> two")
    assert by_text["a photo of a red circle above a blue square"] == ("relation", "relation left of -> above")
    assert by_text["a photo of a blue square left of a red circle"] == ("relation", "swap sides of left of")
    # Articles agree after a colour change.
    assert "a photo of an orange circle left of a blue square" in by_text
    # Held-out combinations (green circle, yellow square, red cross) are never named.
    assert not any(mentions_heldout(parse_prompt(t)) for t in texts)
    assert "a photo of a red circle left of a yellow square" not in by_text


def test_true_edits_are_not_negatives():
    # "a circle" -> "a red circle" or "a small circle" stays true of a small red circle.
    texts = [h.text for h in hard_negatives(SCENE, "a circle", n=100, rng=random.Random(0))]
    assert "a blue circle" in texts and "a large circle" in texts and "two circles" in texts
    assert "a red circle" not in texts and "a small circle" not in texts
    assert "a square" not in texts  # there is a square too
    # Held-out combinations come back when asked for.
    assert "a green circle" not in texts
    everything = hard_negatives(SCENE, "a circle", n=100, rng=random.Random(0), exclude_heldout=False)
    assert "a green circle" in [h.text for h in everything]


def test_wording_is_kept_and_made_to_agree():
    texts = [h.text for h in hard_negatives(SCENE, "There is a red circle.", n=100)]
    assert "There is a blue circle." in texts
    assert "There are two red circles." in texts  # "is" follows the new count
    digits = [h.text for h in hard_negatives(SCENE, "1 red circle and 1 blue square", n=100)]
    assert "2 red circles and 1 blue square" in digits and "1 red circle and 0 blue squares" in digits


def test_kinds_take_turns_and_rng_decides_the_rest():
    first = hard_negatives(SCENE, CAPTION, n=3, rng=random.Random(1))
    assert sorted(h.kind for h in first) == sorted(NEGATIVE_KINDS)
    again = hard_negatives(SCENE, CAPTION, n=3, rng=random.Random(1))
    assert first == again
    draws = {
        tuple(h.text for h in hard_negatives(SCENE, CAPTION, n=10, rng=random.Random(s))) for s in range(5)
    }
    assert len(draws) > 1
    assert all(isinstance(h, HardNegative) for h in first)


def test_default_caption_and_requirements():
    negatives = hard_negatives(SCENE)  # the scene's positional caption, seeded by the scene
    assert len(negatives) == 10 and negatives == hard_negatives(SCENE)
    from_requirements = hard_negatives(SCENE, parse_prompt("a red circle"), n=5)
    assert all(not holds(SCENE, h.text) for h in from_requirements)


def test_bad_captions_are_refused():
    with pytest.raises(ValueError, match="not true of the scene"):
        hard_negatives(SCENE, "a red square")
    with pytest.raises(PromptError):
        hard_negatives(SCENE, "a hexagon")
    with pytest.raises(ValueError, match="n must be"):
        hard_negatives(SCENE, CAPTION, n=-1)
    assert hard_negatives(SCENE, CAPTION, n=0) == []


@pytest.mark.parametrize("split", ["test", "heldout"])
def test_suite_prompts_get_ten_false_negatives(split):
    counts = []
    for i, prompt in enumerate(load_suite(split)[::7]):
        scene = sample_scene(prompt.requirements, i)
        negatives = hard_negatives(scene, prompt.prompt, rng=random.Random(i))
        assert not any(holds(scene, h.text) for h in negatives), prompt.prompt
        if prompt.category == "position":
            assert "relation" in {h.kind for h in negatives}
        counts.append(len(negatives))
    # Only "a small red square"-like prompts run short: "no small red squares" alone names
    # nothing that is there, which the grammar refuses.
    assert min(counts) >= 9 and sum(counts) / len(counts) > 9.5


def test_one_edit_variants_need_no_scene_and_leave_out_edits_that_only_add_a_word():
    variants = one_edit_variants(CAPTION)
    texts = [v.text for v in variants]
    assert len(texts) == len(set(texts)) and CAPTION not in texts
    assert {
        "a photo of a blue circle left of a red square",
        "a photo of a red circle above a blue square",
    } <= set(texts)
    assert all(v.family not in SPECIALISING_EDITS for v in variants)
    for v in variants:
        parse_prompt(v.text)
    # With the specialising edits, the hard negatives are exactly the variants false for the scene.
    every = one_edit_variants(CAPTION, specialising=True)
    false = {v.text for v in every if not holds(SCENE, v.text)}
    assert false == {h.text for h in hard_negatives(SCENE, CAPTION, n=1000, rng=random.Random(0))}
    assert "a photo of a large red circle left of a blue square" in {v.text for v in every} - set(texts)
    assert len(one_edit_variants(CAPTION, n=3)) == 3
    with pytest.raises(PromptError):
        one_edit_variants("a purple elephant")


def test_edited_requirements_names_what_an_edit_changed():
    original = parse_prompt(CAPTION)  # 0: a red circle, 1: a blue square, 2: circle left of square

    def blamed(text):
        return edited_requirements(original, parse_prompt(text))

    assert blamed("a photo of a green circle left of a blue square") == (0,)
    assert blamed("a photo of a red circle left of a blue triangle") == (1,)
    assert blamed("a photo of a blue circle left of a red square") == (0, 1)  # swap colour
    assert blamed("a photo of a red circle above a blue square") == (2,)
    assert blamed("a photo of a blue square left of a red circle") == (2,)  # sides swapped
    assert blamed(CAPTION) == ()
    # Reordered object groups with no relation restate the prompt.
    assert (
        edited_requirements(
            parse_prompt("a red circle and a blue circle"), parse_prompt("a blue circle and a red circle")
        )
        == ()
    )
