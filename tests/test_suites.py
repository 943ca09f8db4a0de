"""Prompt suites: sizes, disjoint splits, determinism, held-out combinations, satisfiability."""

import hashlib
import os
import subprocess
import sys

import pytest

from selfcorrect.errors import SelfcorrectError
from selfcorrect.world.grammar import parse_prompt
from selfcorrect.world.requirements import CATEGORIES, evaluate
from selfcorrect.world.sampling import sample_scene
from selfcorrect.world.scene import COLOURS, SHAPES
from selfcorrect.world.suites import (
    HELDOUT_COMBOS,
    SPLITS,
    is_heldout_combo,
    load_suite,
    mentions_heldout,
    suite_counts,
    suite_table,
)

# sha256 of "category<TAB>prompt" lines of the whole test split, computed once. If this changes,
# every published test-split number changes meaning: only update it on purpose.
TEST_SPLIT_SHA256 = "57ede0b6f84b0baa2e3fb98c04f1dd5bd2afc73c69b4c08b90e7c683fdafe9ab"
COLOUR_CATEGORIES = ("colors", "counting", "color_attribution", "negation")


def digest(prompts) -> str:
    return hashlib.sha256("\n".join(f"{p.category}\t{p.prompt}" for p in prompts).encode()).hexdigest()


def all_prompts():
    return [p for split in SPLITS for p in load_suite(split)]


def test_sizes():
    counts = suite_counts()
    for category in CATEGORIES:
        assert counts["test"][category] >= 100
        assert counts["val"][category] == 50
        assert counts["train"][category] >= 100
        assert counts["heldout"][category] == (100 if category in COLOUR_CATEGORIES else 0)
    for split in SPLITS:
        for category in CATEGORIES:
            assert len(load_suite(split, category)) == counts[split][category]
    table = suite_table()
    assert "heldout" in table and "| counting |" in table


def test_splits_are_disjoint_and_prompts_distinct():
    texts = [p.prompt for p in all_prompts()]
    assert len(texts) == len(set(texts))


def test_splits_with_many_meanings_are_disjoint_in_meaning():
    def meaning(r):
        # Order-free and mirror-free: "A left of B" == "B right of A".
        mirror = {"right of": "left of", "below": "above"}
        groups = sorted(repr(g) for g in r.objects)
        rels = []
        for rel in r.relations:
            a, b = r.objects[rel.subject], r.objects[rel.reference]
            if rel.relation in mirror:
                a, b = b, a
            rels.append((repr(a), mirror.get(rel.relation, rel.relation), repr(b)))
        return tuple(groups), tuple(sorted(rels))

    for category in ("counting", "position", "color_attribution", "negation"):
        seen = {}
        for split in ("train", "val", "test"):
            for p in load_suite(split, category):
                assert seen.setdefault(meaning(p.requirements), split) == split, p.prompt


def test_test_split_is_fixed():
    assert digest(load_suite("test")) == TEST_SPLIT_SHA256


def test_suites_are_the_same_in_a_fresh_interpreter():
    # No hash() or set order: another process (another hash seed) builds identical suites.
    code = (
        "import hashlib; from selfcorrect.world.suites import load_suite, SPLITS; "
        "print(hashlib.sha256(repr([(p.split, p.category, p.prompt) for s in SPLITS "
        "for p in load_suite(s)]).encode()).hexdigest())"
    )
    here = hashlib.sha256(repr([(p.split, p.category, p.prompt) for p in all_prompts()]).encode()).hexdigest()
    there = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    ).stdout.strip()
    assert there == here


def test_every_prompt_parses_to_its_requirements_and_category_and_can_be_drawn():
    for i, p in enumerate(all_prompts()):
        parsed = parse_prompt(p.prompt)
        assert parsed == p.requirements and parsed.category == p.category, p.prompt
        scene = sample_scene(parsed, seed=i)
        assert all(r.passed for r in evaluate(scene.objects, parsed)), p.prompt


def test_heldout_combos():
    assert len(HELDOUT_COMBOS) == 4
    assert sorted(s for _, s in HELDOUT_COMBOS) == sorted(SHAPES)
    assert len({c for c, _ in HELDOUT_COMBOS}) == 4
    assert sum(is_heldout_combo(c, s) for c in COLOURS for s in SHAPES) == 4
    with pytest.raises(ValueError, match="got"):
        is_heldout_combo("circle", "green")  # swapped arguments
    for split in ("train", "val", "test"):
        assert not any(mentions_heldout(p.requirements) for p in load_suite(split)), split
    heldout = load_suite("heldout")
    assert heldout and all(mentions_heldout(p.requirements) for p in heldout)
    assert {p.category for p in heldout} == set(COLOUR_CATEGORIES)


def test_prompts_look_like_geneval():
    test = load_suite("test")
    assert sum(p.prompt.startswith("a photo of ") for p in test) > len(test) / 3
    counting = [p.requirements.objects[0].count for p in load_suite("test", "counting")]
    assert set(counting) == {1, 2, 3, 4}
    relations = {p.requirements.relations[0].relation for p in load_suite("test", "position")}
    assert relations == {"left of", "right of", "above", "below"}


def test_unknown_split_or_category():
    with pytest.raises(SelfcorrectError, match="unknown split 'nope'; splits are train, val, test, heldout"):
        load_suite("nope")
    with pytest.raises(ValueError, match="unknown category 'colours'"):
        load_suite("test", "colours")
    assert load_suite("heldout", "position") == []
