"""WorldDataset: determinism, answers recomputed from the scene, balance, held-out combinations."""

import random
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from selfcorrect.world.data import QA_KINDS, WorldDataset, relation_parts, scene_qa
from selfcorrect.world.grammar import CAPTION_STYLES, NOUNS, SIZE_WORDS, parse_prompt
from selfcorrect.world.render import render
from selfcorrect.world.requirements import evaluate
from selfcorrect.world.scene import COLOURS, relative_position
from selfcorrect.world.suites import is_heldout_combo, mentions_heldout

N = 150


@pytest.fixture(scope="module")
def items():
    ds = WorldDataset(N, seed=3)
    return [ds[i] for i in range(N)]


def description(words: str) -> dict:
    """'small red circles' -> {'size': 'small', 'colour': 'red', 'shape': 'circle'}; 'object' -> no shape."""
    *modifiers, noun = words.split()
    out = {"shape": NOUNS.get(noun)}
    assert out["shape"] is not None or noun in ("object", "objects"), words
    for w in modifiers:
        key = "colour" if w in COLOURS else "size"
        out[key] = w if w in COLOURS else SIZE_WORDS[w]
    return out


def matching(objects, words: str) -> list:
    d = description(words)
    return [o for o in objects if all(v is None or getattr(o, k) == v for k, v in d.items())]


def the_one(objects, words: str):
    (obj,) = matching(objects, words)  # the question may only name something unambiguous
    return obj


def expected_answer(objects, question: str, kind: str) -> str:
    """Recompute an answer from the scene spec alone, reading the question back."""
    yes_no = {True: "yes", False: "no"}
    if kind == "existence":
        words = re.fullmatch(r"is there an? (.+)\?|are there any (.+)\?", question)
        return yes_no[bool(matching(objects, words.group(1) or words.group(2)))]
    if kind == "count":
        return str(len(matching(objects, re.fullmatch(r"how many (.+) are there\?", question).group(1))))
    if kind == "colour":
        return the_one(objects, re.fullmatch(r"what colour is the (.+)\?", question).group(1)).colour
    if kind == "shape":
        return the_one(objects, re.fullmatch(r"what shape is the (.+)\?", question).group(1)).shape
    if kind == "relation":
        a, relation, b = re.fullmatch(
            r"is the (.+) (left of|right of|above|below) the (.+)\?", question
        ).groups()
        return yes_no[relation in relative_position(the_one(objects, a).box, the_one(objects, b).box)]
    a, b = re.fullmatch(r"where is the (.+) relative to the (.+)\?", question).groups()
    (relation,) = relative_position(the_one(objects, a).box, the_one(objects, b).box)
    return relation


def test_items_are_deterministic():
    a, b = WorldDataset(20, seed=5), WorldDataset(20, seed=5)
    for i in (0, 7, 19):
        x, y = a[i], b[i]
        assert x["image"].tobytes() == y["image"].tobytes()
        assert (x["scene"], x["captions"], x["qa"]) == (y["scene"], y["captions"], y["qa"])
    # Item i depends on (seed, i) only, not on the data set's size or the order of access.
    assert WorldDataset(100, seed=5)[7]["qa"] == a[7]["qa"]
    assert WorldDataset(20, seed=6)[7]["scene"] != a[7]["scene"]
    assert a[-1]["index"] == 19
    with pytest.raises(IndexError):
        a[20]


def test_item_contents(items):
    for item in items[:20]:
        assert item["image"].mode == "RGB" and item["image"].size == (64, 64)
        assert set(item["captions"]) == set(CAPTION_STYLES)
        assert {qa.kind for qa in item["qa"]} <= set(QA_KINDS)
    kinds = {qa.kind for item in items for qa in item["qa"]}
    assert kinds == set(QA_KINDS)


def test_captions_hold_for_their_scene(items):
    for item in items:
        for text in item["captions"].values():
            assert all(r.passed for r in evaluate(item["scene"].objects, parse_prompt(text))), text


def test_answers_match_the_scene(items):
    for item in items:
        for qa in item["qa"]:
            assert qa.answer == expected_answer(item["scene"].objects, qa.question, qa.kind), qa


def test_relation_parts_read_back_every_relation_question(items):
    asked = [qa for item in items for qa in item["qa"] if qa.kind == "relation"]
    assert asked
    for qa in asked:
        a, relation, b = relation_parts(qa.question)
        assert qa.question == f"is the {a} {relation} the {b}?"
    assert relation_parts("Is the small red circle above the cross?") == (
        "small red circle",
        "above",
        "cross",
    )
    with pytest.raises(ValueError, match="not a relation question"):
        relation_parts("is there a red circle?")


def test_yes_no_answers_are_balanced(items):
    answers = [qa.answer for item in items for qa in item["qa"] if qa.kind in ("existence", "relation")]
    assert len(answers) > 2 * N
    assert 0.45 <= answers.count("no") / len(answers) <= 0.55
    counts = [qa.answer for item in items for qa in item["qa"] if qa.kind == "count"]
    assert "0" in counts and "2" in counts  # counts are digits, zero included


def test_no_heldout_combos_by_default(items):
    def combos_named(text):
        words = text.rstrip("?.").lower().split()
        return [(c, NOUNS[n]) for c, n in zip(words, words[1:]) if c in COLOURS and n in NOUNS]

    for item in items:
        assert not any(is_heldout_combo(o.colour, o.shape) for o in item["scene"].objects)
        for text in item["captions"].values():
            assert not mentions_heldout(parse_prompt(text)), text
        for qa in item["qa"]:
            assert not any(is_heldout_combo(c, s) for c, s in combos_named(qa.question)), qa
    everything = WorldDataset(N, seed=3, exclude_heldout=False)
    shown = [
        i for i in range(N) if any(is_heldout_combo(o.colour, o.shape) for o in everything.scene(i).objects)
    ]
    assert shown
    with pytest.raises(ValueError, match="held-out"):
        scene_qa(everything.scene(shown[0]), random.Random(0))


def test_transform_hook():
    def noisy(scene, rng):  # a stand-in for a degraded renderer
        pixels = np.asarray(render(scene, 32), dtype=np.int16) + rng.integers(-20, 20, (32, 32, 3))
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    ds = WorldDataset(3, seed=1, canvas=32, degrade=True, transform=noisy)
    assert ds[1]["image"].tobytes() == ds[1]["image"].tobytes()
    assert ds[1]["image"].tobytes() != render(ds.scene(1), 32).tobytes()
    with pytest.raises(ValueError, match="degrade=True needs transform"):
        WorldDataset(3, degrade=True)
    with pytest.raises(ValueError, match="RGB PIL image of 64x64"):
        WorldDataset(3, transform=lambda scene, rng: render(scene, 32))[0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_objects"):
        WorldDataset(3, min_objects=0)
    with pytest.raises(ValueError, match="caption styles"):
        WorldDataset(3, caption_styles=("poetic",))
    with pytest.raises(ValueError, match="canvas"):
        WorldDataset(3, canvas=8)


def test_hf_dataset():
    datasets = pytest.importorskip("datasets")
    ds = WorldDataset(10, seed=2)
    hf = ds.to_hf_dataset(4)
    assert isinstance(hf, datasets.Dataset) and len(hf) == 4
    assert set(hf.column_names) == {"image", "captions", "qa", "scene"}
    row = hf[2]
    assert row["image"].size == (64, 64)
    assert row["captions"] == ds[2]["captions"]
    assert row["qa"] == [qa.to_dict() for qa in ds[2]["qa"]]


def test_import_is_torch_free_and_works_with_a_dataloader():
    probe = "import sys, selfcorrect.world.data; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    torch_data = pytest.importorskip("torch.utils.data")
    batch = next(iter(torch_data.DataLoader(WorldDataset(8, seed=0), batch_size=4, collate_fn=list)))
    assert len(batch) == 4 and isinstance(batch[0]["image"], Image.Image)
