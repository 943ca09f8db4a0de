"""Scene spec, renderer, requirement evaluation and scene sampling."""

import itertools

import numpy as np
import pytest

from selfcorrect.errors import UnsatisfiableError
from selfcorrect.world.render import render
from selfcorrect.world.requirements import (
    CountRequirement,
    ObjectQuery,
    RelationRequirement,
    Requirements,
    evaluate,
)
from selfcorrect.world.sampling import random_scene, sample_scene
from selfcorrect.world.scene import (
    COLOURS,
    PALETTE,
    SHAPES,
    Scene,
    WorldObject,
    relative_position,
    size_of_box,
)


def req(*objects, relations=()):
    return Requirements(tuple(objects), tuple(relations))


def count(shape, n=1, exact=False, colour=None, size=None):
    return CountRequirement(ObjectQuery(shape, colour, size), n, exact)


# --- scene spec -----------------------------------------------------------------------------


def test_palette_colours_are_far_apart():
    rgb = np.array(list(PALETTE.values()), dtype=float)
    distances = [np.linalg.norm(a - b) for a, b in itertools.combinations(rgb, 2)]
    assert len(PALETTE) >= 6 and min(distances) > 60


def test_world_object_rejects_bad_attributes():
    with pytest.raises(ValueError, match="unknown shape"):
        WorldObject("hexagon", "red", "small", (0.1, 0.1, 0.3, 0.3))
    with pytest.raises(ValueError, match="unknown colour"):
        WorldObject("circle", "pink", "small", (0.1, 0.1, 0.3, 0.3))
    with pytest.raises(ValueError, match="inside the unit canvas"):
        WorldObject("circle", "red", "small", (0.9, 0.1, 1.2, 0.3))


def test_scene_round_trips_through_dict():
    scene = random_scene(3, texture=0.2)
    assert Scene.from_dict(scene.to_dict()) == scene


def test_size_of_box():
    assert size_of_box((0, 0, 0.18, 0.18)) == "small"
    assert size_of_box((0, 0, 0.28, 0.28)) == "large"


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ((0.0, 0.4, 0.2, 0.6), (0.6, 0.4, 0.8, 0.6), {"left of"}),
        ((0.6, 0.4, 0.8, 0.6), (0.0, 0.4, 0.2, 0.6), {"right of"}),
        ((0.4, 0.0, 0.6, 0.2), (0.4, 0.6, 0.6, 0.8), {"above"}),
        ((0.4, 0.6, 0.6, 0.8), (0.4, 0.0, 0.6, 0.2), {"below"}),
        # Diagonal: both components survive the shrink and exceed 0.5 of the offset length.
        ((0.0, 0.0, 0.2, 0.2), (0.7, 0.7, 0.9, 0.9), {"left of", "above"}),
        # Centres 0.05 apart, boxes 0.2 wide: dx shrinks by 0.04 to 0.01, and 0.01 / 0.05 = 0.2
        # is below 0.5, so no relation is read even though A is slightly to the left.
        ((0.40, 0.4, 0.60, 0.6), (0.45, 0.4, 0.65, 0.6), set()),
        # 0.25 apart: (0.25 - 0.04) / 0.25 = 0.84 > 0.5.
        ((0.40, 0.4, 0.60, 0.6), (0.65, 0.4, 0.85, 0.6), {"left of"}),
        # Same centre: nothing.
        ((0.4, 0.4, 0.6, 0.6), (0.4, 0.4, 0.6, 0.6), set()),
    ],
)
def test_relative_position_follows_genevals_rule(a, b, expected):
    assert relative_position(a, b) == expected


def test_relative_position_shrink_removes_small_offsets():
    # dx = 0.03 < 0.1 * (0.2 + 0.2) = 0.04: the shrunk offset is zero, so no relation.
    assert relative_position((0.40, 0.4, 0.60, 0.6), (0.43, 0.4, 0.63, 0.6)) == set()
    # A steep diagonal: |dy| dominates, so only "below".
    assert relative_position((0.45, 0.7, 0.55, 0.8), (0.40, 0.1, 0.50, 0.2)) == {"below"}


# --- renderer -------------------------------------------------------------------------------


def test_render_is_deterministic_and_sized():
    scene = random_scene(11, texture=0.3)
    a, b = render(scene), render(scene)
    assert a.size == (64, 64) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert render(scene, 128).size == (128, 128)


def test_render_draws_each_object_in_its_colour_at_its_box():
    for shape, colour in itertools.product(SHAPES, COLOURS):
        obj = WorldObject(shape, colour, "large", (0.3, 0.3, 0.6, 0.6))
        pixels = np.asarray(render(Scene((obj,)), 100))
        # The centre of every shape is filled (the triangle's centroid sits lower: sample there).
        y = 50 if shape != "triangle" else 52
        assert tuple(pixels[y, 45]) == PALETTE[colour], (shape, colour)
        assert tuple(pixels[5, 5]) == (200, 200, 200)
        # Nothing is drawn outside the box.
        outside = np.ones((100, 100), bool)
        outside[29:61, 29:61] = False
        assert (pixels[outside] == (200, 200, 200)).all()


def test_texture_touches_only_the_background():
    obj = WorldObject("square", "blue", "large", (0.3, 0.3, 0.6, 0.6))
    flat = np.asarray(render(Scene((obj,), texture=0.0)))
    textured = np.asarray(render(Scene((obj,), texture=0.5, seed=4)))
    assert not np.array_equal(flat, textured)
    assert (textured[25, 25] == PALETTE["blue"]).all()


def test_render_rejects_absurd_sizes():
    with pytest.raises(ValueError, match="16 to 1024"):
        render(random_scene(0), 8)


# --- requirements ---------------------------------------------------------------------------


def obj(shape, colour, box, size="small"):
    return WorldObject(shape, colour, size, box)


LEFT = (0.05, 0.4, 0.25, 0.6)
RIGHT = (0.70, 0.4, 0.90, 0.6)
TOP = (0.4, 0.05, 0.6, 0.25)


def test_at_least_versus_exact_counts():
    objects = [obj("circle", "red", LEFT), obj("circle", "red", RIGHT), obj("circle", "green", TOP)]
    assert evaluate(objects, req(count("circle", colour="red")))[0].passed  # "a red circle"
    assert evaluate(objects, req(count("circle", 2, True, "red")))[0].passed  # "two red circles"
    r = evaluate(objects, req(count("circle", 2, True)))[0]  # "two circles": there are three
    assert not r.passed and r.reason == "found 3 circles"
    assert not evaluate(objects, req(count("circle", 4, True, "red")))[0].passed


def test_negation_and_size():
    objects = [obj("square", "blue", LEFT, "large")]
    assert evaluate(objects, req(count("circle", 0, True)))[0].passed
    assert not evaluate(objects, req(count("square", 0, True)))[0].passed
    assert evaluate(objects, req(count("square", size="large")))[0].passed
    assert not evaluate(objects, req(count("square", size="small")))[0].passed


def test_relations_need_every_pair():
    objects = [obj("circle", "red", LEFT), obj("square", "blue", RIGHT)]
    left = req(count("circle"), count("square"), relations=[RelationRequirement(0, "left of", 1)])
    right = req(count("circle"), count("square"), relations=[RelationRequirement(0, "right of", 1)])
    assert all(r.passed for r in evaluate(objects, left))
    result = evaluate(objects, right)[-1]
    assert not result.passed and "left of" in result.reason
    # A second circle on the wrong side breaks "the circle is left of the square".
    objects.append(obj("circle", "red", (0.72, 0.05, 0.92, 0.25)))
    assert not evaluate(objects, left)[-1].passed
    # No square at all: the relation cannot hold.
    assert "no square" in evaluate(objects[:1], left)[-1].reason


class Blob:
    # What the oracle reports for something it cannot read: shape None.
    def __init__(self, colour, box):
        self.shape, self.colour, self.size, self.box = None, colour, None, box


def test_unrecognised_blob_makes_an_exact_count_unverifiable():
    objects = [obj("circle", "red", LEFT), Blob("red", RIGHT)]
    exact = evaluate(objects, req(count("circle", 1, True, "red")))[0]
    assert not exact.passed and "unverified" in exact.reason
    # A blue blob cannot be a red circle; "at least" counts ignore blobs.
    assert evaluate([objects[0], Blob("blue", RIGHT)], req(count("circle", 1, True, "red")))[0].passed
    assert evaluate(objects, req(count("circle", colour="red")))[0].passed


def test_categories():
    assert req(count("circle")).category == "single_object"
    assert req(count("circle", colour="red")).category == "colors"
    assert req(count("circle", 3, True)).category == "counting"
    assert req(count("circle"), count("square")).category == "two_objects"
    assert req(count("circle", colour="red"), count("square", colour="blue")).category == "color_attribution"
    assert (
        req(count("circle"), count("square"), relations=[RelationRequirement(0, "above", 1)]).category
        == "position"
    )
    assert req(count("square", colour="blue"), count("circle", 0, True)).category == "negation"


def test_requirements_validation():
    with pytest.raises(ValueError, match="at least one object"):
        Requirements(())
    with pytest.raises(ValueError, match="counts go from 0 to 4"):
        count("circle", 5, True)
    with pytest.raises(ValueError, match="itself"):
        RelationRequirement(0, "left of", 0)
    with pytest.raises(ValueError, match="absent"):
        req(count("circle"), count("square", 0, True), relations=[RelationRequirement(0, "left of", 1)])


# --- sampling -------------------------------------------------------------------------------

PROMPTS = [
    req(count("circle")),
    req(count("triangle", 4, True, "green")),
    req(count("circle", 2, True, "red"), count("square", colour="blue")),
    req(
        count("cross", size="large"),
        count("square", size="large"),
        relations=[RelationRequirement(0, "below", 1)],
    ),
    req(count("square", colour="blue"), count("circle", 0, True)),
]


@pytest.mark.parametrize("requirements", PROMPTS, ids=lambda r: r.category)
def test_sampled_scenes_satisfy_their_requirements(requirements):
    for seed in range(20):
        scene = sample_scene(requirements, seed, distractors=seed % 3)
        assert all(r.passed for r in evaluate(scene.objects, requirements))
        assert len(scene.objects) == requirements.min_objects + seed % 3


def test_sampling_is_seeded():
    r = PROMPTS[2]
    assert sample_scene(r, 5) == sample_scene(r, 5)
    assert sample_scene(r, 5) != sample_scene(r, 6)


def test_objects_never_overlap():
    for seed in range(200):
        boxes = [o.box for o in random_scene(seed, min_objects=6, max_objects=8).objects]
        for a, b in itertools.combinations(boxes, 2):
            overlap_x = min(a[2], b[2]) - max(a[0], b[0])
            overlap_y = min(a[3], b[3]) - max(a[1], b[1])
            assert overlap_x < 0 or overlap_y < 0


def test_unsatisfiable_prompts_raise():
    with pytest.raises(UnsatisfiableError, match="at most 8"):
        sample_scene(req(count("circle", 4, True), count("square", 4, True), count("cross", 1)), 0)
    with pytest.raises(UnsatisfiableError, match="contradicts"):
        sample_scene(req(count("circle", 2, True), count("circle", 0, True)), 0)


def test_relation_needs_two_distinct_objects():
    one_circle = [obj("circle", "red", LEFT)]
    result = evaluate(
        one_circle,
        req(count("circle"), count("circle", colour="red"), relations=[RelationRequirement(0, "left of", 1)]),
    )
    assert not result[-1].passed and "nothing to compare" in result[-1].reason


def test_two_relations_on_one_pair_can_be_sampled():
    two = req(
        count("circle"),
        count("square"),
        relations=[RelationRequirement(0, "left of", 1), RelationRequirement(0, "above", 1)],
    )
    scene = sample_scene(two, 0)
    assert all(r.passed for r in evaluate(scene.objects, two))
