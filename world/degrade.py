"""Seeded degradations that make a rendered scene look like a small diffusion model's sample.

They mimic ``shared/notes/generated-samples-early.png``: tinted, blotchy, noisy backgrounds;
colour drift; blur; JPEG artefacts; tilted, squashed or wobbly shapes; colour bleeding (one
object half one colour, half another); merged objects; specks and fragments; and samples that
are only noise. Each returns the image together with the ground truth a perfect oracle should
report, so the oracle can be measured (:mod:`selfcorrect.world.selftest`).

Ground-truth rules, fixed up front from the degradation parameters (never from what the oracle
says):

* pixel-level kinds (``blur``, ``noise``, ``jpeg``, ``jpeg_420``, ``colour_drift``,
  ``tinted_background``, ``low_contrast``, ``specks``) keep every object as it is. Their ranges
  are bounded so that a person can still read every object: parameters are redrawn while any
  colour an object shows (a bicolour object's seam included) is closer to the background than
  ``MIN_READABLE_CONTRAST`` plus the blotches, or than ``READABLE_NOISE_RATIO`` times the noise;
  specks and fragments stay smaller than any object (at most ``SPECK_MAX_SIDE``). ``jpeg``
  keeps full-resolution chroma: at 64 px, 4:2:0 chroma leaves an object whose luminance matches
  the background (yellow on gray) 32 px of chroma to be shaped by, and a small yellow circle and
  square look alike to a person too. ``jpeg_420`` is that harder case, kept out of the random
  mix and measured on its own by the self-test;
* ``wrong_shape`` (tilt <= 5 degrees, squash <= 15 %, vertex jitter <= 3 % of the side) keeps
  the shape name; the box is the drawn shape's box, whose size class never changes under these
  bounds;
* ``colour_bleed`` paints an object in two colours split through its centroid (each part
  >= ~40 % of it) -> colour None;
* ``merged`` moves one object onto another and paints both in the first one's colour (the
  generator fused them), so that they overlap by at least ``MERGE_MIN_OVERLAP`` of the smaller
  and each keeps at least ``MERGE_MIN_OWN`` of itself outside the other (so the union is neither
  of them) -> one blob (shape None, size None) of that colour over their joint box. Objects of
  two colours overlapping are left out: a person reads the upper one as a whole shape and the
  lower one as partly hidden, which is occlusion, not a blob;
* ``pure_noise`` draws no objects at all -> nothing.
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from selfcorrect.world.oracle import Detected
from selfcorrect.world.render import SUPERSAMPLE, draw_shape, render
from selfcorrect.world.scene import COLOURS, PALETTE, Scene, WorldObject, shape_outline, size_of_box

PIXEL_KINDS: tuple[str, ...] = (
    "blur",
    "noise",
    "jpeg",
    "jpeg_420",
    "colour_drift",
    "tinted_background",
    "low_contrast",
    "specks",
)
SCENE_KINDS: tuple[str, ...] = ("wrong_shape", "colour_bleed", "merged", "pure_noise")
KINDS: tuple[str, ...] = PIXEL_KINDS + SCENE_KINDS
# Kinds that change what is drawn (not just the finished pixels): these are composited here
# rather than taken from the renderer.
DRAWING_KINDS: tuple[str, ...] = ("colour_drift", "tinted_background", "specks", *SCENE_KINDS)

# How often each kind joins the random mix of :func:`degrade`; several at once is the norm in
# generated samples, and the rates roughly follow how often each failure shows in the sample sheet.
MIX_RATES: dict[str, float] = {
    "blur": 0.35,
    "noise": 0.5,
    "jpeg": 0.3,
    "colour_drift": 0.45,
    "tinted_background": 0.65,
    "low_contrast": 0.2,
    "specks": 0.3,
    "wrong_shape": 0.35,
    "colour_bleed": 0.15,
    "merged": 0.15,
}
PURE_NOISE_RATE = 0.04  # fraction of random mixes that are only noise (no objects drawn)

# Parameter ranges, in pixels of a 64-px canvas (scaled with the canvas) or 0..255 RGB units.
BLUR_SIGMA = (0.4, 1.0)  # gaussian blur sigma (px)
NOISE_STD = (4.0, 24.0)  # per-pixel, per-channel gaussian noise over the whole image
JPEG_QUALITY = (30, 70)  # ``jpeg`` keeps full-resolution chroma (4:4:4); ``jpeg_420`` halves it
HUE_DRIFT = 6.0  # degrees, each object's hue moves by up to this much either way
SATURATION_SCALE = (0.7, 1.1)  # each object's HSV saturation is multiplied by a factor in this range
VALUE_SCALE = (0.85, 1.1)  # ... and its HSV value
BACKGROUND_LEVEL = (115.0, 205.0)  # gray level of a tinted background (the sheet's are 110..190)
BACKGROUND_CHROMA = (8.0, 45.0)  # how far from gray the tint is (the sheet's reach ~50)
BLOTCH_AMPLITUDE = (0.0, 12.0)  # smooth colour blotches on a tinted background
BACKGROUND_GRAIN = (1.0, 8.0)  # fine noise std on a tinted background only
STREAK_RATE = 0.35  # fraction of tinted backgrounds with faint brush-stroke streaks
STREAK_AMPLITUDE = (4.0, 12.0)
CONTRAST_SCALE = (0.5, 0.75)  # low_contrast pulls the image towards gray by this factor
SPECKS = (2, 12)  # number of specks / fragments
SPECK_MAX_SIDE = 4.5  # px; smaller than any object (the smallest is ~10 px)
SPECK_CLEARANCE = 2.0  # px kept free between a speck and any object box or other speck
WRONG_SHAPE_RATE = 0.6  # fraction of the objects wrong_shape deforms (at least one)
TILT = 5.0  # degrees, wrong_shape rotates by up to this much
SQUASH = 0.15  # wrong_shape shortens one axis by up to this fraction
JITTER = 0.03  # wrong_shape moves each vertex by up to this fraction of the side
CIRCLE_VERTICES = 48  # a wobbly circle is drawn as a polygon with this many vertices
BLEED_OFFSET = 0.05  # the colour split line passes within this fraction of the side from the centroid
BLEED_SOFTNESS = (0.0, 0.25)  # width of the blend between the two colours (fraction of the side)
MERGE_DISTANCE = (0.35, 0.65)  # centre offset of merged objects, as a fraction of their mean side
MERGE_MIN_OVERLAP = 0.15  # merged shapes overlap by at least this fraction of the smaller one
MERGE_MIN_OWN = 0.35  # ... and each keeps at least this fraction of itself outside the other
MIN_READABLE_CONTRAST = 55.0  # RGB distance an object must keep from its background to be readable
READABLE_NOISE_RATIO = 3.0  # ... and at least this many times the total noise std
PURE_NOISE_STD = (22.0, 45.0)  # per-pixel noise of a pure-noise sample
PURE_NOISE_BLOTCH = (12.0, 30.0)  # blotch amplitude of a pure-noise sample
REDRAWS = 50  # parameter redraws before the readability rule gives up on a pixel kind ...
RELAXED_KINDS = ("tinted_background", "low_contrast", "noise")  # ... and drops these instead


@dataclass
class DegradedSample:
    """A degraded image and what a perfect oracle should read from it.

    Attributes:
        image: RGB ``PIL.Image`` of ``size x size``.
        truth: the objects a perfect oracle reports (confidence 1.0); blobs have shape None.
        kinds: the kinds actually applied (``merged`` is dropped when no pair could overlap
            cleanly, ``colour_bleed`` and ``merged`` need objects).
        params: the drawn parameters, for reports and debugging.
    """

    image: Image.Image
    truth: list[Detected]
    kinds: tuple[str, ...]
    params: dict = field(default_factory=dict)


def degrade(scene: Scene, rng, kinds=None, size: int = 64) -> tuple[Image.Image, list[Detected]]:
    """Render ``scene`` with degradations: ``(image, ground truth)``.

    Args:
        scene: what to draw.
        rng: a ``numpy.random.Generator`` or an integer seed.
        kinds: names from :data:`KINDS` to apply all together, or None for a random mix like a
            generated sample (each kind with its :data:`MIX_RATES` probability, and
            :data:`PURE_NOISE_RATE` of pure noise).
        size: canvas side in pixels.
    """
    sample = degrade_sample(scene, rng, kinds=kinds, size=size)
    return sample.image, sample.truth


def random_kinds(rng) -> tuple[str, ...]:
    """A random mix of kinds, as :func:`degrade` draws it when ``kinds`` is None."""
    rng = np.random.default_rng(rng)
    if rng.random() < PURE_NOISE_RATE:
        return tuple(k for k in ("pure_noise", "blur", "jpeg") if k == "pure_noise" or rng.random() < 0.5)
    return tuple(k for k in KINDS if k in MIX_RATES and rng.random() < MIX_RATES[k])


def degrade_sample(scene: Scene, rng, kinds=None, size: int = 64) -> DegradedSample:
    """Like :func:`degrade`, also returning the kinds applied and their parameters."""
    rng = np.random.default_rng(rng)
    kinds = random_kinds(rng) if kinds is None else tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown degradation {unknown[0]!r}; the kinds are {', '.join(KINDS)}")
    if not isinstance(size, int) or not 16 <= size <= 1024:
        raise ValueError(f"canvas size must be an integer from 16 to 1024, got {size!r}")
    scale = size / 64.0
    params: dict = {}
    applied = set(kinds)

    if "pure_noise" in kinds:
        items: list[_Item] = []
    else:
        items = [_Item.from_object(o) for o in scene.objects]
        if "wrong_shape" in kinds:
            _wrong_shapes(items, rng, params)
        if "merged" in kinds and not _merge(items, rng, params):
            applied.discard("merged")
        if "colour_bleed" in kinds and not _bleed(items, rng, params):
            applied.discard("colour_bleed")
        if "colour_drift" in kinds:
            _drift(items, rng, params)

    background, pixel = _pixel_params(scene, items, kinds, rng, params)
    if params.get("readability") == "relaxed":
        applied -= set(RELAXED_KINDS)
    if not any(k in kinds for k in DRAWING_KINDS):
        image = np.asarray(render(scene, size), dtype=np.float32)  # the untouched scene, as rendered
    else:
        specks = _specks(items, rng, params) if "specks" in kinds else []
        colour, alpha = _rasterise(items + specks, size)
        bg = _background_field(scene, background, size, rng)
        image = bg * (1.0 - alpha[..., None]) + colour
    image = _pixel_degradations(image, pixel, scale, rng)
    truth = [] if "pure_noise" in kinds else [t for item in items if (t := item.truth()) is not None]
    return DegradedSample(image, truth, tuple(k for k in KINDS if k in applied), params)


# --- Scene-level kinds --------------------------------------------------------------------------


@dataclass
class _Item:
    """One thing to draw: a shape (or a speck) with its geometry, fill and ground truth."""

    shape: str
    size: str
    colour: str
    points: list | None = None  # polygon (normalised); None = the exact world outline of `box`
    box: tuple = (0.0, 0.0, 1.0, 1.0)
    fill: tuple = (0.0, 0.0, 0.0)  # RGB actually drawn (after colour drift)
    second_fill: tuple | None = None  # colour_bleed: the other colour
    second_colour: str | None = None
    split: tuple | None = None  # colour_bleed: (px, py, nx, ny, softness), normalised
    merged_with: _Item | None = None  # merged: the item drawn over this one
    hidden: bool = False  # merged: drawn, but reported through the item it merged into
    is_speck: bool = False

    @classmethod
    def from_object(cls, obj: WorldObject) -> _Item:
        return cls(obj.shape, obj.size, obj.colour, None, obj.box, tuple(map(float, PALETTE[obj.colour])))

    def polygon(self) -> list:
        """The outline as a polygon (normalised), circles approximated."""
        if self.points is not None:
            return self.points
        kind, geometry = shape_outline(self.shape, self.box)
        if kind == "polygon":
            return list(geometry)
        x0, y0, x1, y1 = geometry
        t = np.linspace(0, 2 * math.pi, CIRCLE_VERTICES, endpoint=False)
        return list(zip((x0 + x1) / 2 + (x1 - x0) / 2 * np.cos(t), (y0 + y1) / 2 + (y1 - y0) / 2 * np.sin(t)))

    def truth(self) -> Detected | None:
        if self.hidden or self.is_speck:
            return None
        if self.merged_with is not None:
            other = self.merged_with
            box = _union(self.box, other.box)
            note = f"merged: {self.colour} {self.shape} + {other.shape}"
            return Detected(None, self.colour, None, box, 1.0, note)
        if self.second_colour is not None:
            note = f"two colours: {self.colour}, {self.second_colour}"
            return Detected(self.shape, None, self.size, self.box, 1.0, note)
        return Detected(self.shape, self.colour, self.size, self.box, 1.0)


def _union(a, b):
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _bounds(points) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return (min(xs), min(ys), max(xs), max(ys))


def _wrong_shapes(items: list[_Item], rng, params) -> None:
    chosen = [i for i in range(len(items)) if rng.random() < WRONG_SHAPE_RATE] or (
        [int(rng.integers(len(items)))] if items else []
    )
    for i in chosen:
        item = items[i]
        x0, y0, x1, y1 = item.box
        cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
        tilt = math.radians(rng.uniform(-TILT, TILT))
        squash = 1.0 - rng.uniform(0.0, SQUASH)
        squash_x = rng.random() < 0.5
        points = []
        for x, y in item.polygon():
            dx, dy = x - cx, y - cy
            dx, dy = (dx * squash, dy) if squash_x else (dx, dy * squash)
            dx, dy = dx * math.cos(tilt) - dy * math.sin(tilt), dx * math.sin(tilt) + dy * math.cos(tilt)
            jx, jy = rng.uniform(-JITTER, JITTER, 2) * side
            points.append((float(np.clip(cx + dx + jx, 0.0, 1.0)), float(np.clip(cy + dy + jy, 0.0, 1.0))))
        item.points, item.box = points, _bounds(points)
        assert size_of_box(item.box) == item.size, "wrong_shape bounds must keep the size class"
    params["wrong_shape"] = len(chosen)


def _merge(items: list[_Item], rng, params) -> bool:
    """Move one object onto another; False when no pair can overlap under the rules."""
    if len(items) < 2:
        return False
    for _ in range(40):
        a, b = (items[i] for i in rng.choice(len(items), size=2, replace=False))
        mean_side = ((a.box[2] - a.box[0]) + (b.box[2] - b.box[0])) / 2
        distance = rng.uniform(*MERGE_DISTANCE) * mean_side
        angle = rng.uniform(0, 2 * math.pi)
        acx, acy = (a.box[0] + a.box[2]) / 2, (a.box[1] + a.box[3]) / 2
        bcx, bcy = (b.box[0] + b.box[2]) / 2, (b.box[1] + b.box[3]) / 2
        dx, dy = acx + distance * math.cos(angle) - bcx, acy + distance * math.sin(angle) - bcy
        moved = [(x + dx, y + dy) for x, y in b.polygon()]
        box = _bounds(moved)
        if box[0] < 0.01 or box[1] < 0.01 or box[2] > 0.99 or box[3] > 0.99:
            continue
        others = [o for o in items if o is not a and o is not b]
        if any(_boxes_near(box, o.box, 0.03) for o in others):
            continue
        mask_a, mask_b = _coverage(a.polygon()), _coverage(moved)
        overlap = (mask_a & mask_b).sum()
        if overlap < MERGE_MIN_OVERLAP * min(mask_a.sum(), mask_b.sum()):
            continue
        # Each must keep a large part of its outline outside the other: otherwise the union is
        # just the bigger shape, or reads as one object lying on another.
        if (
            min((mask_a & ~mask_b).sum() / mask_a.sum(), (mask_b & ~mask_a).sum() / mask_b.sum())
            < MERGE_MIN_OWN
        ):
            continue
        b.points, b.box = moved, box
        b.colour, b.fill = a.colour, a.fill
        # `a` (drawn first, partly hidden) carries the blob; `b` is drawn on top of it.
        items.remove(b)
        items.insert(items.index(a) + 1, b)
        a.merged_with, b.hidden = b, True
        params["merged"] = round(distance / mean_side, 3)
        return True
    return False


def _boxes_near(a, b, gap) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _coverage(points, resolution: int = 128) -> np.ndarray:
    """Boolean (resolution, resolution) mask of a normalised polygon."""
    canvas = Image.new("1", (resolution, resolution), 0)
    ImageDraw.Draw(canvas).polygon([(x * resolution, y * resolution) for x, y in points], fill=1)
    return np.asarray(canvas, dtype=bool)


def _bleed(items: list[_Item], rng, params) -> bool:
    candidates = [it for it in items if not it.hidden and it.merged_with is None]
    if not candidates:
        return False
    count = 1 if len(candidates) == 1 or rng.random() < 0.7 else 2
    for item in (candidates[i] for i in rng.choice(len(candidates), size=count, replace=False)):
        other = COLOURS[int(rng.integers(len(COLOURS)))]
        while other == item.colour:
            other = COLOURS[int(rng.integers(len(COLOURS)))]
        poly = np.array(item.polygon())
        side = item.box[2] - item.box[0]
        cx, cy = _centroid(poly)
        theta = rng.uniform(0, 2 * math.pi)
        nx, ny = math.cos(theta), math.sin(theta)
        shift = rng.uniform(-BLEED_OFFSET, BLEED_OFFSET) * side
        softness = rng.uniform(*BLEED_SOFTNESS) * side
        item.second_colour, item.second_fill = other, tuple(map(float, PALETTE[other]))
        item.split = (cx + nx * shift, cy + ny * shift, nx, ny, softness)
    params["colour_bleed"] = count
    return True


def _centroid(poly: np.ndarray) -> tuple[float, float]:
    x, y = poly[:, 0], poly[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    return float(((x + np.roll(x, -1)) * cross).sum() / (6 * area)), float(
        ((y + np.roll(y, -1)) * cross).sum() / (6 * area)
    )


def _drift(items: list[_Item], rng, params) -> None:
    # Each object drifts on its own, as the same colour word varies from object to object in
    # generated samples.
    for item in items:
        item.fill = _drifted(item.fill, rng)
        if item.second_fill is not None:
            item.second_fill = _drifted(item.second_fill, rng)
    params["colour_drift"] = True


def _drifted(rgb, rng) -> tuple[float, float, float]:
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    h = (h + rng.uniform(-HUE_DRIFT, HUE_DRIFT) / 360.0) % 1.0
    s = min(1.0, s * rng.uniform(*SATURATION_SCALE))
    v = min(1.0, v * rng.uniform(*VALUE_SCALE))
    return tuple(255.0 * c for c in colorsys.hsv_to_rgb(h, s, v))


def _specks(items: list[_Item], rng, params) -> list[_Item]:
    """Small dots and fragments away from every object; never objects themselves."""
    clearance = SPECK_CLEARANCE / 64.0
    taken = [it.box for it in items]
    out = []
    for _ in range(int(rng.integers(SPECKS[0], SPECKS[1] + 1))):
        for _ in range(20):
            side = rng.uniform(1.5, SPECK_MAX_SIDE) / 64.0
            x0, y0 = rng.uniform(0.0, 1.0 - side, 2)
            box = (x0, y0, x0 + side, y0 + side)
            if any(_boxes_near(box, t, clearance) for t in taken):
                continue
            n = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * math.pi, n))
            radius = rng.uniform(0.5, 1.0, n) * side / 2
            points = list(
                zip(x0 + side / 2 + radius * np.cos(angles), y0 + side / 2 + radius * np.sin(angles))
            )
            name = COLOURS[int(rng.integers(len(COLOURS)))]
            fill = tuple(map(float, PALETTE[name])) if rng.random() < 0.7 else tuple(rng.uniform(20, 120, 3))
            out.append(_Item("speck", "small", name, points, box, fill, is_speck=True))
            taken.append(box)
            break
    params["specks"] = len(out)
    return out


# --- Drawing ------------------------------------------------------------------------------------


def _rasterise(items: list[_Item], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied colour (size, size, 3) and coverage (size, size) of the items, anti-aliased.

    Drawn at SUPERSAMPLE x like the renderer, later items over earlier ones, then box-averaged.
    """
    big = size * SUPERSAMPLE
    colour = np.zeros((big, big, 3), dtype=np.float32)
    alpha = np.zeros((big, big), dtype=np.float32)
    for item in items:
        canvas = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(canvas)
        if item.points is None:
            x0, y0, x1, y1 = (v * big for v in item.box)
            draw_shape(draw, item.shape, (x0, y0, x1 - 1, y1 - 1), 255)  # the renderer's convention
        else:
            draw.polygon([(x * big, y * big) for x, y in item.points], fill=255)
        mask = np.asarray(canvas) > 127
        if item.split is None:
            colour[mask] = item.fill
        else:
            px, py, nx, ny, softness = item.split
            ys, xs = np.nonzero(mask)
            signed = ((xs + 0.5) / big - px) * nx + ((ys + 0.5) / big - py) * ny
            w = np.clip(0.5 + signed / max(softness, 1e-6), 0.0, 1.0)[:, None]
            colour[ys, xs] = (1 - w) * np.array(item.fill) + w * np.array(item.second_fill)
        alpha[mask] = 1.0
    shape = (size, SUPERSAMPLE, size, SUPERSAMPLE)
    return colour.reshape(*shape, 3).mean(axis=(1, 3)), alpha.reshape(shape).mean(axis=(1, 3))


def _background_field(scene: Scene, background: dict | None, size: int, rng) -> np.ndarray:
    """(size, size, 3) float background: the scene's own, or a tinted, blotchy, grainy one."""
    if background is None:
        return np.asarray(render(scene.with_objects(()), size), dtype=np.float32)
    field = np.broadcast_to(np.array(background["colour"], np.float32), (size, size, 3)).copy()
    if background["blotch"] > 0:
        cells = int(rng.integers(3, 9))
        coarse = rng.normal(0.0, 1.0, (cells, cells, 3)).astype(np.float32)
        field += _upsample(coarse, size) * background["blotch"]
    if background["streak"] > 0:
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(5.0, 12.0) * size / 64
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        wave = np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
        patchy = _upsample(rng.normal(0.0, 1.0, (4, 4, 1)).astype(np.float32), size)[..., 0] > 0.3
        tint = rng.normal(0.0, 1.0, 3).astype(np.float32)
        field += ((wave > 0.6) & patchy)[..., None] * tint / np.linalg.norm(tint) * background["streak"]
    field += rng.normal(0.0, background["grain"], (size, size, 3)).astype(np.float32)
    return field


def _upsample(coarse: np.ndarray, size: int) -> np.ndarray:
    """Smoothly enlarge a (h, w, c) grid to (size, size, c)."""
    zoom = (size / coarse.shape[0], size / coarse.shape[1], 1)
    return ndi.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)[:size, :size]


def _pixel_params(scene, items, kinds, rng, params) -> tuple[dict | None, dict]:
    """Draw background and pixel-level parameters under the readability rule."""
    for _ in range(REDRAWS):
        background, pixel = _draw_pixel_params(scene, kinds, rng)
        if "pure_noise" in kinds or _readable(scene, items, background, pixel):
            break
    else:
        # No readable draw: a person could not read these objects under this mix, so the
        # contrast-eating kinds are left out rather than the ground truth fudged.
        background = None
        pixel = {k: v for k, v in pixel.items() if k not in RELAXED_KINDS}
        params["readability"] = "relaxed"
    params.update(pixel)
    if background is not None:
        params["background"] = {
            k: (np.round(v, 1).tolist() if k == "colour" else round(v, 2)) for k, v in background.items()
        }
    return background, pixel


def _draw_pixel_params(scene, kinds, rng) -> tuple[dict | None, dict]:
    """One draw of the tinted background (None: the scene's own) and the pixel-level settings."""
    background = None
    pure = "pure_noise" in kinds
    if "tinted_background" in kinds or pure:
        level = rng.uniform(*BACKGROUND_LEVEL)
        theta = rng.uniform(0, 2 * math.pi)
        chroma = rng.uniform(*BACKGROUND_CHROMA)
        # Unit vectors spanning the plane orthogonal to gray: the tint moves hue, not brightness.
        e1, e2 = np.array([2.0, -1.0, -1.0]) / math.sqrt(6), np.array([0.0, 1.0, -1.0]) / math.sqrt(2)
        colour = np.clip(level + chroma * (math.cos(theta) * e1 + math.sin(theta) * e2), 0, 255)
        background = {
            "colour": colour,
            "blotch": rng.uniform(*(PURE_NOISE_BLOTCH if pure else BLOTCH_AMPLITUDE)),
            "grain": rng.uniform(*BACKGROUND_GRAIN),
            "streak": rng.uniform(*STREAK_AMPLITUDE) if rng.random() < STREAK_RATE else 0.0,
        }
    pixel: dict = {}
    if "low_contrast" in kinds:
        pixel["low_contrast"] = rng.uniform(*CONTRAST_SCALE)
    if "blur" in kinds:
        pixel["blur"] = rng.uniform(*BLUR_SIGMA)
    if "noise" in kinds or pure:
        pixel["noise"] = rng.uniform(*(PURE_NOISE_STD if pure else NOISE_STD))
    if "jpeg" in kinds or "jpeg_420" in kinds:
        pixel["jpeg"] = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
        pixel["chroma"] = "4:2:0" if "jpeg_420" in kinds else "4:4:4"
    return background, pixel


def _readable(scene, items, background, pixel) -> bool:
    """The up-front rule: every object keeps a contrast a person can read through the noise.

    It covers every colour an object shows, including the 50/50 blend where a bicolour object's
    two colours meet: a seam the colour of the background would show two separate pieces, not
    one object.
    """
    bg = np.array(background["colour"] if background else scene.background, np.float64)
    noise = math.hypot(pixel.get("noise", 0.0), background["grain"] if background else 0.0)
    blotch = background["blotch"] + background["streak"] if background else 0.0
    scale = pixel.get("low_contrast", 1.0)
    need = max(MIN_READABLE_CONTRAST, READABLE_NOISE_RATIO * noise) + blotch
    for item in items:
        fills = [np.array(item.fill)]
        if item.second_fill is not None:
            fills += [np.array(item.second_fill), (np.array(item.second_fill) + fills[0]) / 2]
        if any(scale * np.linalg.norm(fill - bg) < need for fill in fills):
            return False
    return True


def _pixel_degradations(image: np.ndarray, pixel: dict, scale: float, rng) -> Image.Image:
    """Low contrast, blur, noise and JPEG, in the order a generator's output suffers them."""
    if "low_contrast" in pixel:
        gray = float(image.mean())  # pulling towards a neutral gray keeps every hue
        image = gray + pixel["low_contrast"] * (image - gray)
    if "blur" in pixel:
        image = ndi.gaussian_filter(image, sigma=(pixel["blur"] * scale, pixel["blur"] * scale, 0))
    if "noise" in pixel:
        image = image + rng.normal(0.0, pixel["noise"], image.shape).astype(np.float32)
    out = Image.fromarray(np.clip(image + 0.5, 0, 255).astype(np.uint8))
    if "jpeg" in pixel:
        buffer = io.BytesIO()
        subsampling = {"4:4:4": 0, "4:2:0": 2}[pixel["chroma"]]
        out.save(buffer, format="JPEG", quality=pixel["jpeg"], subsampling=subsampling)
        buffer.seek(0)
        out = Image.open(buffer).convert("RGB")
    return out
