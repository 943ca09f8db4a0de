"""The oracle reads images of the world back into objects and judges prompts on them."""

import itertools
import json

import numpy as np
import pytest
from PIL import Image

from selfcorrect.errors import ImageError
from selfcorrect.world.degrade import degrade_sample
from selfcorrect.world.oracle import Detected, analyse, check, load_image, verdict
from selfcorrect.world.render import render
from selfcorrect.world.requirements import CountRequirement, ObjectQuery, Requirements
from selfcorrect.world.sampling import random_scene
from selfcorrect.world.scene import COLOURS, SHAPES, SIZE_RANGES, SIZES, Scene, WorldObject


def read(detected) -> list[tuple]:
    return sorted((d.shape or "", d.colour or "", d.size or "") for d in detected)


def truth(scene) -> list[tuple]:
    return sorted((o.shape, o.colour, o.size) for o in scene.objects)


def box_iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def one(shape, colour, size, side=None, at=(0.37, 0.41)) -> Scene:
    side = side or sum(SIZE_RANGES[size]) / 2
    return Scene((WorldObject(shape, colour, size, (at[0], at[1], at[0] + side, at[1] + side)),))


# --- clean renders ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape, colour, size", list(itertools.product(SHAPES, COLOURS, SIZES)))
def test_every_clean_object_reads_back_exactly(shape, colour, size):
    lo, hi = SIZE_RANGES[size]
    for side in (lo, hi):  # both ends of the size range
        scene = one(shape, colour, size, side)
        (found,) = analyse(render(scene))
        assert (found.shape, found.colour, found.size) == (shape, colour, size)
        assert box_iou(found.box, scene.objects[0].box) > 0.8
        assert found.confidence > 0.5 and found.note == ""


def test_random_clean_scenes_read_back_exactly():
    for seed in range(40):
        scene = random_scene(seed, max_objects=6, texture=0.4 if seed % 2 else 0.0)
        assert read(analyse(render(scene))) == truth(scene), seed


def test_other_canvas_sizes():
    for seed in range(10):
        scene = random_scene(seed)
        assert read(analyse(render(scene, 128))) == truth(scene), seed
        assert read(analyse(render(scene, 256))) == truth(scene), seed
    # At 32 px a large object is still 8-10 px across and reads; small ones (5-6 px) may not.
    for shape, colour in itertools.product(SHAPES, COLOURS):
        scene = one(shape, colour, "large")
        assert read(analyse(render(scene, 32))) == truth(scene)


def test_input_modes_and_arrays():
    scene = random_scene(5)
    image = render(scene)
    expected = read(analyse(image))
    assert expected == truth(scene)
    assert read(analyse(np.asarray(image))) == expected
    assert read(analyse(image.convert("RGBA"))) == expected
    assert read(analyse(image.convert("P", palette=Image.Palette.ADAPTIVE))) == expected
    # Transparent pixels are the world's canvas, not black.
    rgba = image.convert("RGBA")
    alpha = np.where((np.asarray(image) == 200).all(axis=-1), 0, 255).astype(np.uint8)
    rgba.putalpha(Image.fromarray(alpha))
    assert read(analyse(rgba)) == expected
    # Grayscale keeps shapes (for objects darker than the canvas) but no colour can be claimed.
    gray = analyse(render(one("triangle", "red", "large")).convert("L"))
    assert [(d.shape, d.colour) for d in gray] == [("triangle", None)]
    assert all(d.colour is None for d in analyse(image.convert("L")))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((64, 48, 3), np.uint8), "square"),
        (np.zeros((8, 8, 3), np.uint8), "at least 16"),
        (np.zeros((64, 64, 3), np.float32), "uint8"),
        (np.zeros((64, 64, 2), np.uint8), r"\(H, W, 3\)"),
        ("image.png", "PIL image or a numpy array"),
    ],
)
def test_bad_inputs_are_image_errors(bad, message):
    with pytest.raises(ImageError, match=message):
        analyse(bad)


def test_analyse_is_deterministic():
    image = degrade_sample(random_scene(2), 2).image
    assert analyse(image) == analyse(image)


def test_arbitrary_images_never_crash():
    # Flat, saturated, gradient and random-block images with any amount of noise.
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    images = [np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 255, np.uint8), np.stack([ramp] * 3, -1)]
    for _ in range(60):
        pixels = np.ones((64, 64, 3)) * rng.integers(0, 256, 3)
        for _ in range(rng.integers(0, 8)):
            x, y = rng.integers(0, 60, 2)
            w, h = rng.integers(1, 40, 2)
            pixels[y : y + h, x : x + w] = rng.integers(0, 256, 3)
        pixels += rng.normal(0, rng.uniform(0, 80), pixels.shape)
        images.append(np.clip(pixels, 0, 255).astype(np.uint8))
    for pixels in images:
        for found in analyse(pixels):
            assert 0 <= found.box[0] < found.box[2] <= 1 and 0 <= found.box[1] < found.box[3] <= 1
            assert 0.0 <= found.confidence <= 1.0
            assert (found.shape is None) == (found.size is None)


# --- what generated images do -----------------------------------------------------------------


def test_bicolour_object_is_one_object_with_no_colour():
    for seed in range(12):
        scene = one(SHAPES[seed % 4], COLOURS[seed % 6], "large")
        sample = degrade_sample(scene, seed, kinds=("colour_bleed",))
        (found,) = analyse(sample.image)
        assert found.colour is None and found.shape == scene.objects[0].shape, seed
        assert "two colours" in found.note


def test_two_touching_shapes_of_two_colours_are_two_objects():
    scene = Scene(
        (
            WorldObject("square", "red", "large", (0.2, 0.3, 0.48, 0.58)),
            WorldObject("square", "blue", "large", (0.48, 0.3, 0.76, 0.58)),
        )
    )
    assert read(analyse(render(scene))) == truth(scene)


def test_merged_objects_are_an_unrecognised_blob():
    scene = Scene(
        (
            WorldObject("circle", "green", "large", (0.2, 0.3, 0.48, 0.58)),
            WorldObject("triangle", "green", "large", (0.36, 0.42, 0.64, 0.7)),
        )
    )
    (found,) = analyse(render(scene))
    assert found.shape is None and found.colour == "green" and found.size is None
    assert found.confidence == 0.0 and found.note.startswith("unrecognised blob")
    for seed in range(8):
        sample = degrade_sample(random_scene(seed, min_objects=2), seed, kinds=("merged",))
        blobs = [t for t in sample.truth if t.shape is None]
        found = analyse(sample.image)
        for blob in blobs:
            near = [d for d in found if box_iou(d.box, blob.box) > 0.5]
            assert [d.shape for d in near] == [None], (seed, near)


def test_pure_noise_gives_no_confident_objects():
    for seed in range(20):
        sample = degrade_sample(random_scene(seed), seed, kinds=("pure_noise",))
        assert sample.truth == []
        assert all(d.shape is None for d in analyse(sample.image)), seed


def test_specks_and_fragments_are_ignored():
    for seed in range(10):
        scene = random_scene(seed)
        sample = degrade_sample(scene, seed, kinds=("specks",))
        assert sample.params["specks"] > 0
        assert read(analyse(sample.image)) == truth(scene), seed


@pytest.mark.parametrize(
    "kinds",
    [
        ("tinted_background",),
        ("noise",),
        ("blur",),
        ("jpeg",),
        ("colour_drift",),
        ("low_contrast",),
        ("wrong_shape",),
    ],
)
def test_reads_through_each_pixel_degradation(kinds):
    scenes = [random_scene(seed, max_objects=4) for seed in range(15)]
    right = sum(
        read(analyse(degrade_sample(scene, seed, kinds=kinds).image)) == truth(scene)
        for seed, scene in enumerate(scenes)
    )
    assert right >= 14, f"{kinds}: {right}/15 scenes read exactly"


def test_tinted_noisy_background_like_the_sample_sheet():
    # A pale green, noisy, blotchy canvas (as in generated-samples-early.png) is not an object.
    rng = np.random.default_rng(0)
    base = np.array([150.0, 190.0, 150.0]) + rng.normal(0, 12, (64, 64, 3))
    pixels = np.clip(base, 0, 255).astype(np.uint8)
    assert analyse(pixels) == []
    pixels[20:32, 20:32] = (215, 35, 35)  # 12 px = 0.19 of the canvas: small
    (found,) = analyse(pixels)
    assert (found.shape, found.colour, found.size) == ("square", "red", "small")


# --- prompts ------------------------------------------------------------------------------------


def count(shape, n=1, exact=False, colour=None):
    return CountRequirement(ObjectQuery(shape, colour), n, exact)


def test_check_gives_verdicts_with_reasons():
    scene = Scene(
        (
            WorldObject("circle", "red", "small", (0.1, 0.1, 0.28, 0.28)),
            WorldObject("circle", "red", "large", (0.5, 0.1, 0.78, 0.38)),
            WorldObject("square", "blue", "large", (0.1, 0.6, 0.38, 0.88)),
        )
    )
    image = render(scene)
    passing = check(image, Requirements((count("circle", 2, True, "red"), count("square", colour="blue"))))
    assert passing.passed and [r.reason for r in passing.results] == [
        "found 2 red circles",
        "found 1 blue square",
    ]
    failing = check(image, Requirements((count("circle", 3, True, "red"),)))
    assert not failing.passed and failing.results[0].reason == "found 2 red circles"
    assert len(failing.detected) == 3
    record = json.loads(json.dumps(failing.to_dict()))
    assert record["passed"] is False and len(record["detected"]) == 3


def test_a_blob_makes_an_exact_count_unverifiable():
    blob = Detected(None, "red", None, (0.5, 0.5, 0.8, 0.8), 0.0, "unrecognised blob")
    circle = Detected("circle", "red", "small", (0.1, 0.1, 0.28, 0.28), 0.9)
    result = verdict([circle, blob], Requirements((count("circle", 1, True, "red"),)))
    assert not result.passed and "could be one" in result.results[0].reason
    assert verdict([circle, blob], Requirements((count("circle", colour="red"),))).passed


# --- files -------------------------------------------------------------------------------------


def test_load_image_reads_files_and_explains_bad_ones(tmp_path):
    good = tmp_path / "scene.png"
    render(random_scene(1)).save(good)
    assert load_image(good).size == (64, 64)
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(text)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(truncated)
