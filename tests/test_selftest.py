"""The oracle's self-test: matching, requirement building, a small run and its reports."""

import json
from collections import Counter

import numpy as np
import pytest

from selfcorrect.world.oracle import Detected
from selfcorrect.world.requirements import CATEGORIES, evaluate
from selfcorrect.world.selftest import (
    COMMAND,
    box_iou,
    build_checks,
    match_objects,
    run_selftest,
    to_markdown,
    write_results,
)


def thing(shape, colour, size, box):
    return Detected(shape, colour, size, box, 1.0)


RED_CIRCLE = thing("circle", "red", "small", (0.1, 0.1, 0.28, 0.28))
BLUE_SQUARE = thing("square", "blue", "large", (0.5, 0.5, 0.8, 0.8))
GREEN_BLOB = thing(None, "green", None, (0.5, 0.1, 0.9, 0.4))


def test_box_iou():
    assert box_iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert box_iou((0, 0, 0.5, 1), (0.5, 0, 1, 1)) == 0.0
    assert box_iou((0, 0, 1, 1), (0.5, 0, 1, 1)) == pytest.approx(0.5)


def test_match_objects_counts_and_explains_mistakes():
    shifted = thing("circle", "red", "small", (0.12, 0.11, 0.3, 0.29))
    assert match_objects([shifted, BLUE_SQUARE], [RED_CIRCLE, BLUE_SQUARE])[:3] == (2, 0, 0)
    # Wrong colour at the right place: one miss and one false alarm, described as such.
    wrong = thing("square", "purple", "large", BLUE_SQUARE.box)
    tp, fp, fn, mistakes = match_objects([RED_CIRCLE, wrong], [RED_CIRCLE, BLUE_SQUARE])
    assert (tp, fp, fn) == (1, 1, 1)
    assert mistakes == Counter({"large blue square -> large purple square": 1})
    # Blobs match blobs (None == None); a far box does not match; nothing found is a miss.
    assert match_objects([GREEN_BLOB], [GREEN_BLOB])[:3] == (1, 0, 0)
    far = thing("circle", "red", "small", (0.7, 0.7, 0.88, 0.88))
    tp, fp, fn, mistakes = match_objects([far], [RED_CIRCLE])
    assert (tp, fp, fn) == (0, 1, 1)
    assert mistakes == Counter({"small red circle -> nothing": 1, "nothing -> small red circle": 1})


def test_build_checks_covers_every_category_and_both_outcomes():
    # (With a blob in the picture, "no X" can never be verified: kept out here.)
    truth = [RED_CIRCLE, BLUE_SQUARE, thing("triangle", "green", "small", (0.1, 0.6, 0.28, 0.78))]
    rng = np.random.default_rng(0)
    outcomes = Counter()
    for _ in range(60):
        requirements = build_checks(truth, rng)
        assert [r.category for r in requirements] == list(CATEGORIES)
        for r in requirements:
            outcomes[r.category, all(x.passed for x in evaluate(truth, r))] += 1
    for category in CATEGORIES:
        assert outcomes[category, True] > 0 and outcomes[category, False] > 0, category


@pytest.fixture(scope="module")
def small_run():
    return run_selftest(n_scenes=100, seed=0, progress=False)


def test_small_selftest_meets_the_bars(small_run):
    assert small_run["n_scenes"] == 100 and small_run["n_images"] == 225  # + 25 stress images
    assert small_run["objects"]["clean"]["f1"] == 1.0
    assert small_run["object_f1"] >= 0.98
    assert small_run["prompt_accuracy"] >= 0.99
    assert small_run["objects"]["all"]["truth"] > 250
    for category in CATEGORIES:
        assert small_run["checks"]["category: " + category]["n"] == 200
    assert {"blur", "noise", "tinted_background", "merged", "colour_bleed"} <= set(small_run["objects"])
    assert small_run["speed"]["images_per_second"] > 0
    assert small_run["command"] == COMMAND and small_run["machine"]["cpu_count"] >= 1


def test_selftest_is_reproducible_apart_from_timings():
    a, b = (run_selftest(n_scenes=6, seed=3, progress=False) for _ in range(2))
    for key in ("objects", "checks", "errors"):
        assert a[key] == b[key]
    with pytest.raises(ValueError, match="at least 1"):
        run_selftest(n_scenes=0)


def test_write_results_writes_json_and_markdown(tmp_path, small_run):
    json_path = tmp_path / "out" / "oracle_selftest.json"
    write_results(small_run, json_path, json_path.with_suffix(".md"))
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(small_run))
    markdown = json_path.with_suffix(".md").read_text()
    assert markdown == to_markdown(small_run)
    assert COMMAND in markdown and "| all |" in markdown and "| colour_bleed |" in markdown
    assert not [p for p in json_path.parent.iterdir() if p.name.endswith(".tmp")]
    write_results(small_run, tmp_path / "only.json")
    assert (tmp_path / "only.json").exists() and not (tmp_path / "only.md").exists()
