"""Seeded degradations and the ground truth they promise."""

import numpy as np
import pytest

from selfcorrect.world.degrade import (
    KINDS,
    PIXEL_KINDS,
    degrade,
    degrade_sample,
    random_kinds,
)
from selfcorrect.world.render import render
from selfcorrect.world.sampling import random_scene
from selfcorrect.world.scene import SHAPES, Scene, WorldObject, size_of_box

SCENE = Scene(
    (
        WorldObject("circle", "red", "small", (0.08, 0.08, 0.26, 0.26)),
        WorldObject("square", "blue", "large", (0.55, 0.1, 0.83, 0.38)),
        WorldObject("triangle", "yellow", "large", (0.1, 0.55, 0.38, 0.83)),
        WorldObject("cross", "green", "small", (0.62, 0.62, 0.8, 0.8)),
    )
)


def attributes(objects) -> list[tuple]:
    return [(o.shape, o.colour, o.size, tuple(np.round(o.box, 6))) for o in objects]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_seeded_and_sized(kind):
    a = degrade_sample(SCENE, 7, kinds=(kind,))
    b = degrade_sample(SCENE, np.random.default_rng(7), kinds=(kind,))
    assert a.image.size == (64, 64) and a.image.mode == "RGB"
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.truth == b.truth
    assert a.kinds == (kind,)
    assert all(t.confidence == 1.0 for t in a.truth)
    assert degrade_sample(SCENE, 7, kinds=(kind,), size=128).image.size == (128, 128)


def test_no_kinds_is_the_plain_render():
    image, truth = degrade(SCENE, 0, kinds=())
    assert np.array_equal(np.asarray(image), np.asarray(render(SCENE)))
    assert attributes(truth) == attributes(SCENE.objects)


@pytest.mark.parametrize("kind", PIXEL_KINDS)
def test_pixel_kinds_keep_the_truth_and_change_pixels(kind):
    sample = degrade_sample(SCENE, 3, kinds=(kind,))
    assert attributes(sample.truth) == attributes(SCENE.objects)
    assert not np.array_equal(np.asarray(sample.image), np.asarray(render(SCENE)))


def test_wrong_shapes_keep_names_and_size_classes():
    for seed in range(30):
        scene = random_scene(seed, max_objects=6)
        sample = degrade_sample(scene, seed, kinds=("wrong_shape",))
        assert [(t.shape, t.colour, t.size) for t in sample.truth] == [
            (o.shape, o.colour, o.size) for o in scene.objects
        ]
        assert all(size_of_box(t.box) == t.size for t in sample.truth)
        assert sample.params["wrong_shape"] >= 1


def test_colour_bleed_makes_colour_unknown_and_keeps_the_shape():
    for seed in range(10):
        sample = degrade_sample(SCENE, seed, kinds=("colour_bleed",))
        mixed = [t for t in sample.truth if t.colour is None]
        assert 1 <= len(mixed) <= 2 and all(t.shape in SHAPES and t.size for t in mixed)
        assert all("two colours" in t.note for t in mixed)


def test_merged_objects_become_one_blob_of_their_colour():
    merged = 0
    for seed in range(20):
        scene = random_scene(seed, min_objects=2)
        sample = degrade_sample(scene, seed, kinds=("merged",))
        if "merged" not in sample.kinds:  # no pair could overlap within the rules
            assert attributes(sample.truth) == attributes(scene.objects)
            continue
        merged += 1
        blobs = [t for t in sample.truth if t.shape is None]
        assert len(blobs) == 1 and len(sample.truth) == len(scene.objects) - 1
        (blob,) = blobs
        assert blob.size is None and blob.colour is not None and blob.note.startswith("merged")
    assert merged >= 15


def test_merging_needs_two_objects():
    single = Scene((SCENE.objects[0],))
    sample = degrade_sample(single, 0, kinds=("merged", "blur"))
    assert sample.kinds == ("blur",) and attributes(sample.truth) == attributes(single.objects)


def test_pure_noise_has_no_truth():
    for seed in range(5):
        image, truth = degrade(SCENE, seed, kinds=("pure_noise",))
        assert truth == [] and np.asarray(image).std() > 10


def test_specks_stay_away_from_objects_and_smaller_than_them():
    sample = degrade_sample(SCENE, 1, kinds=("specks",))
    assert sample.params["specks"] >= 2
    assert attributes(sample.truth) == attributes(SCENE.objects)


def test_random_mix_looks_like_generated_samples():
    kinds_seen = set()
    for seed in range(200):
        sample = degrade_sample(random_scene(seed), seed)
        kinds_seen.update(sample.kinds)
        assert set(sample.kinds) <= set(KINDS)
        for t in sample.truth:
            assert 0 <= t.box[0] < t.box[2] <= 1 and 0 <= t.box[1] < t.box[3] <= 1
            assert (t.shape is None) == (t.size is None)
            if t.shape is not None:
                assert t.size == size_of_box(t.box)
    # Everything but the stress-only 4:2:0 JPEG turns up in a random mix.
    assert kinds_seen == set(KINDS) - {"jpeg_420"}
    assert np.mean([len(random_kinds(seed)) for seed in range(200)]) > 2  # several at once


def test_readability_rule_keeps_objects_apart_from_the_background():
    # Whatever the mix, every object's colour stays clearly away from the background colour.
    for seed in range(60):
        sample = degrade_sample(SCENE, seed, kinds=("tinted_background", "low_contrast", "noise"))
        pixels = np.asarray(sample.image, dtype=float)
        background = np.median(
            np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3)]), axis=0
        )
        for t in sample.truth:
            x0, y0, x1, y1 = (int(round(v * 64)) for v in t.box)
            centre = np.median(
                pixels[
                    (y0 + y1) // 2 - 1 : (y0 + y1) // 2 + 2, (x0 + x1) // 2 - 1 : (x0 + x1) // 2 + 2
                ].reshape(-1, 3),
                axis=0,
            )
            assert np.linalg.norm(centre - background) > 30, (seed, t)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown degradation 'smudge'"):
        degrade(SCENE, 0, kinds=("smudge",))
    with pytest.raises(ValueError, match="16 to 1024"):
        degrade(SCENE, 0, size=8)
