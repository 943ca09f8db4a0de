"""The oracle: a programmatic analyser that reads an image of the world back into objects.

It is the exam, never the student's notes (see DESIGN.md): benchmarks, tests and training-data
builders may call it; the correction loop and the critics never do.

Pipeline, on a ``WORK_SIZE`` canvas whatever the input size:

1. Background. A 3x3 median removes per-pixel noise. The canvas border ring (mostly background
   even when an object touches the edge) gives a first background colour; pixels clearly away
   from it are set aside and the rest are averaged into a smooth background *field*, so tinted,
   blotchy or shaded backgrounds like those of generated samples neither turn into objects nor,
   through a threshold raised to ignore them, hide real ones.
2. Pieces. A pixel is foreground when its distance from the field (chroma weighted above
   luminance: the world's objects are saturated, shading is not) exceeds a threshold that
   rises with the background's own noise. Connected components are cut at ``OBJECT_LEVEL`` of
   their contrast (faint blur bridges between neighbours fall away); pieces below
   ``MIN_AREA`` / ``MIN_SIDE`` are specks or fragments and are ignored.
3. Colour. The hue of each interior pixel is voted onto the fixed palette. A piece with no
   clear hue is background texture (in a colour image). Two substantial colours mean one
   bicolour object (colour None), or two touching objects when each colour part is a clean
   shape on its own; two neighbouring pieces that together read as one two-colour shape are the
   halves of a bicolour object whose seam blends into the background.
4. Shape. Soft coverage (each pixel unmixed into background and the piece's own colours, 0..1)
   gives the piece's centroid and spread; for each shape these imply the box it would have, and
   the coverage resampled over that box (plus a margin) is compared by soft IoU with templates
   drawn from :func:`~selfcorrect.world.scene.shape_outline` at small tilts and blurs. A weak
   best score, no lead over another shape, a non-square box, or a lump or notch of mismatch
   that survives smoothing (two shapes merged) make it an unrecognised blob, not a guess.
5. Box and size. The box is the one implied for the recognised shape (robust to blur, tilt and
   a lost triangle tip); the size class follows from it via
   :func:`~selfcorrect.world.scene.size_of_box`. A blob's box is its coverage's extent.

The decision thresholds were calibrated on degraded scenes from :mod:`selfcorrect.world.degrade`
with seeds disjoint from the self-test's; :mod:`selfcorrect.world.selftest` measures the result.
Objects under about 6 px across (small objects on canvases under 48 px) cannot be shaped
reliably.
"""

from __future__ import annotations

import colorsys
import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from selfcorrect.errors import ImageError
from selfcorrect.world.requirements import RequirementResult, Requirements, evaluate
from selfcorrect.world.scene import COLOURS, DEFAULT_BACKGROUND, PALETTE, SHAPES, shape_outline, size_of_box

# --- Configuration (pixel quantities are in WORK_SIZE pixels, colours in 0..255 RGB) -----------
WORK_SIZE = 64  # every image is resampled to this side; the world's smallest object is ~10 px here
# Background
BORDER = 3  # width of the canvas ring that gives the first background colour
BACKGROUND_K = 3.0  # pixels this many robust sigmas from the ring colour stay out of the field
BACKGROUND_CELL = 8  # px; cells the background field is averaged over (blotches are larger)
NOISE_STRIDE = 3  # background noise statistics use every third clear pixel: plenty, and cheaper
# Pieces
LUMA_WEIGHT = 0.5  # weight of luminance against chroma in the distance from the background
FG_MIN_DISTANCE = 40.0  # distance from the background that is foreground even on a clean canvas
FG_NOISE_K = 6.0  # foreground threshold = median + this many robust sigmas of background distance
OBJECT_LEVEL = 0.25  # components are cut where distance falls below this fraction of their contrast
CONTRAST_PERCENTILE = 70  # percentile of a component's distances taken as its contrast
MIN_AREA = 20  # pieces smaller than this (px) are specks or fragments, not objects
MIN_SIDE = 7  # ... and so are pieces whose longer box side is shorter than this (px)
SEAM_WIDTH = 2  # px; pieces this close may be the two halves of one bicolour object
# Colour
GRAY_TOLERANCE = 2  # an image whose channels never differ by more than this is grayscale
CHROMA_MIN = 0.18  # HSV saturation below which a pixel has no usable hue (background-like)
HUE_TOLERANCE = 30.0  # degrees; a hue further than this from every palette hue is no colour
COLOURED_FRACTION = 0.5  # an object needs this fraction of interior pixels with a palette hue
MIX_FRACTION = 0.2  # a second colour on this fraction of the voting pixels makes a bicolour object
# Coverage and shape
FINE_SIGMA = 0.7  # px; gaussian that denoises coverage without rounding corners as a median does
ALPHA_NOISE_K = 2.0  # coverage starts this many robust noise sigmas above the background ...
ALPHA_ZERO = 0.15  # ... and at least at this fraction of the object's contrast (JPEG halos, grain)
ALPHA_ZERO_MAX = 0.5  # ... but never above this fraction
OWN_RADIUS = 2  # px around a piece whose coverage counts towards it (blurred edges)
GRID = 24  # side of the canonical grid a piece is resampled into for shape matching
PAD = 0.25  # the grid spans the implied box plus this fraction of its side on each side
ANGLES = (-8.0, -4.0, 0.0, 4.0, 8.0)  # template tilts (degrees): generated shapes are often tilted
BLUR_LEVELS = (0.45, 0.8, 1.15)  # px; template blurs, from pixel footprint only to a blurry sample
SHAPE_MIN_SCORE = 0.75  # soft IoU the best template must reach
SHAPE_MIN_MARGIN = 0.005  # ... and its lead over the best template of any other shape
ASPECT_RANGE = (0.75, 1.33)  # implied box width / height of a shape (world boxes are square)
LUMP_SIGMA = 1.2  # grid cells; smoothing that keeps a lump of mismatch but averages noise away
LUMP_MAX = 0.30  # smoothed mismatch above this is a lump or notch: merged shapes, not one
SPLIT_MIN_SCORE = 0.86  # soft IoU each colour part needs to be read as its own object

_CROSS = ndi.generate_binary_structure(2, 1)  # 4-connectivity, for labelling and morphology
_RING = np.zeros((WORK_SIZE, WORK_SIZE), dtype=bool)  # the border ring the background comes from
_RING[:BORDER] = _RING[-BORDER:] = _RING[:, :BORDER] = _RING[:, -BORDER:] = True


@dataclass(frozen=True)
class Detected:
    """One thing the oracle saw.

    Attributes:
        shape: one of :data:`~selfcorrect.world.scene.SHAPES`, or None for an unrecognised blob.
        colour: one of :data:`~selfcorrect.world.scene.COLOURS`, or None when mixed or unknown.
        size: ``"small"`` / ``"large"`` via :func:`~selfcorrect.world.scene.size_of_box`; None
            for blobs.
        box: ``(x0, y0, x1, y1)`` normalised to ``[0, 1]``, like ``WorldObject.box``.
        confidence: 0..1, how sure the shape and colour reads are (0 for blobs: nothing was read).
        note: free text, e.g. ``"unrecognised blob (...)"`` or ``"two colours: red 55%, blue 45%"``.
    """

    shape: str | None
    colour: str | None
    size: str | None
    box: tuple[float, float, float, float]
    confidence: float
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "box": [round(v, 4) for v in self.box],
            "confidence": round(self.confidence, 3),
            "note": self.note,
        }


@dataclass
class OracleVerdict:
    """The oracle's answer to a prompt about an image.

    Attributes:
        passed: True when every requirement holds.
        results: one :class:`~selfcorrect.world.requirements.RequirementResult` per requirement.
        detected: what :func:`analyse` saw in the image.
    """

    passed: bool
    results: list[RequirementResult]
    detected: list[Detected]

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "results": [r.to_dict() for r in self.results],
            "detected": [d.to_dict() for d in self.detected],
        }


def load_image(path) -> Image.Image:
    """Open an image file completely, so a truncated file fails here and not later.

    Raises:
        ImageError: the file is missing, a directory, not an image, or corrupt.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(f"image file not found: {path}")
    if os.path.isdir(path):
        raise ImageError(f"expected an image file, got a directory: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from exc


def check(image, requirements: Requirements) -> OracleVerdict:
    """Analyse ``image`` and decide each of ``requirements`` on what was seen."""
    return verdict(analyse(image), requirements)


def verdict(detected: list[Detected], requirements: Requirements) -> OracleVerdict:
    """:func:`check` on what :func:`analyse` already returned (one analysis, many prompts)."""
    results = evaluate(detected, requirements)
    return OracleVerdict(all(r.passed for r in results), results, list(detected))


def analyse(image) -> list[Detected]:
    """Read the objects in an image of the world.

    Args:
        image: a ``PIL.Image`` (any mode) or an ``(H, W, 3)`` / ``(H, W)`` uint8 array; square,
            at least 16 px a side.

    Returns:
        The detected objects, top to bottom then left to right. Blobs that could not be read
        have ``shape=None``; mixed or unknown colours have ``colour=None``.

    Raises:
        ImageError: not an image, not square, or smaller than 16 px.
    """
    pixels = _prepare(image)  # (WORK_SIZE, WORK_SIZE, 3) uint8
    channels = pixels.astype(np.int16)
    grayscale = bool(
        (np.abs(channels[..., 0] - channels[..., 1]) <= GRAY_TOLERANCE).all()
        and (np.abs(channels[..., 1] - channels[..., 2]) <= GRAY_TOLERANCE).all()
    )
    rgb = pixels.astype(np.float32)
    smooth = _median3(pixels).astype(np.float32)  # the network is twice as fast on bytes
    background, clear = _background(smooth)  # (H, W, 3) field; (H, W) surely-background pixels
    distance = np.sqrt(_squared_norm((smooth - background) @ _OPPONENT))  # (H, W)
    threshold = _noise_level(distance[clear][::NOISE_STRIDE], FG_NOISE_K, FG_MIN_DISTANCE)
    labels, objects = _pieces(distance, threshold)
    if not objects:
        return []

    # Coverage is measured on a lightly smoothed copy (a median would round corners and tips),
    # in plain RGB: luminance edges are the sharp ones when JPEG has halved the chroma.
    fine = ndi.gaussian_filter(rgb, (FINE_SIGMA, FINE_SIGMA, 0)) - background
    noise = _noise_level(np.sqrt(_squared_norm(fine[clear][::NOISE_STRIDE])), ALPHA_NOISE_K, 0.0)
    colour = ndi.uniform_filter(smooth, size=(3, 3, 1))  # steadier hues for the colour vote
    # Each pixel near a piece belongs to the nearest one, so a soft edge never borrows a
    # neighbour's pixels.
    gap, (iy, ix) = ndi.distance_transform_edt(labels == 0, return_indices=True)
    owner = np.where(gap <= OWN_RADIUS, labels[iy, ix], 0)

    def piece(indices) -> _Piece:
        mask, own = labels == indices[0], owner == indices[0]
        for index in indices[1:]:
            mask, own = mask | (labels == index), own | (owner == index)
        rows, cols = np.flatnonzero(own.any(axis=1)), np.flatnonzero(own.any(axis=0))
        region = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        hue, saturation = _hue_saturation(colour[region])
        return _Piece(mask[region], own[region], fine[region], noise, hue, saturation, region)

    found: list[Detected] = []
    done: set[int] = set()
    # A bicolour object whose two colours blend into something close to the background comes
    # apart at the seam: two neighbouring pieces that together read as one two-colour shape are
    # that object. (Two separate objects never read as one shape together.)
    for first, second in _neighbours(labels, objects):
        if first in done or second in done:
            continue
        union = _read_piece(piece([first, second]), not grayscale)
        if len(union) == 1 and union[0].shape is not None and union[0].colour is None:
            found.extend(union)
            done.update((first, second))
    for index in objects:
        if index not in done:
            found.extend(_read_piece(piece([index]), not grayscale))
    found.sort(key=lambda d: (round(d.box[1], 2), d.box[0]))
    return found


# --- Image preparation --------------------------------------------------------------------------


def _prepare(image) -> np.ndarray:
    """Any accepted input -> (WORK_SIZE, WORK_SIZE, 3) uint8 RGB."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageError(f"expected a uint8 image array, got {image.dtype}")
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] not in (3, 4):
            raise ImageError(f"expected an (H, W, 3) image array, got shape {image.shape}")
        image = Image.fromarray(np.ascontiguousarray(image[..., :3]))
    if not isinstance(image, Image.Image):
        raise ImageError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    width, height = image.size
    if width != height or width < 16:
        raise ImageError(f"expected a square image of at least 16x16 pixels, got {width}x{height}")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels show the world's canvas colour, not black.
        rgba = image.convert("RGBA")
        image = Image.new("RGB", image.size, DEFAULT_BACKGROUND)
        image.paste(rgba, mask=rgba.getchannel("A"))
    elif image.mode != "RGB":
        image = image.convert("RGB")
    if width != WORK_SIZE:
        # BOX averages when shrinking (noise averages away too); BILINEAR when enlarging.
        resample = Image.Resampling.BOX if width > WORK_SIZE else Image.Resampling.BILINEAR
        image = image.resize((WORK_SIZE, WORK_SIZE), resample)
    return np.asarray(image, dtype=np.uint8)


# Devillard's 19-exchange median-of-9 network: ten times faster than scipy's median_filter here.
_MEDIAN9 = (
    (1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
    (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2),
)  # fmt: skip


def _median3(rgb: np.ndarray) -> np.ndarray:
    """3x3 median per channel with replicated edges: (H, W, 3) -> (H, W, 3)."""
    height, width = rgb.shape[:2]
    padded = np.pad(rgb, ((1, 1), (1, 1), (0, 0)), mode="edge")
    v = [padded[i : i + height, j : j + width] for i in range(3) for j in range(3)]
    for i, j in _MEDIAN9:
        v[i], v[j] = np.minimum(v[i], v[j]), np.maximum(v[i], v[j])
    return v[4]


# Orthonormal opponent basis (luminance, two chroma axes) with luminance scaled by LUMA_WEIGHT:
# the world's objects differ from any background mainly in chroma, while texture, shading and
# blotches are mostly luminance.
_OPPONENT = (
    np.array(
        [
            [1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)],
            [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0],
            [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)],
        ],
        dtype=np.float32,
    )
    * np.array([[LUMA_WEIGHT], [1.0], [1.0]], dtype=np.float32)
).T


def _squared_norm(vectors: np.ndarray) -> np.ndarray:
    """Squared length along the last axis: (..., 3) -> (...)."""
    return np.einsum("...i,...i->...", vectors, vectors)


def _cells_to_pixels() -> np.ndarray:
    """(WORK_SIZE, cells) matrix: gaussian smoothing over background cells (sigma one cell),
    then bilinear enlargement to pixels, both with edges replicated."""
    cells = WORK_SIZE // BACKGROUND_CELL
    smoothing = ndi.gaussian_filter1d(np.eye(cells, dtype=np.float32), 1.0, axis=0, mode="nearest")
    position = np.clip((np.arange(WORK_SIZE) + 0.5) / BACKGROUND_CELL - 0.5, 0, cells - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, cells - 1)
    enlarge = np.zeros((WORK_SIZE, cells), dtype=np.float32)
    np.add.at(enlarge, (np.arange(WORK_SIZE), low), 1 - (position - low))
    np.add.at(enlarge, (np.arange(WORK_SIZE), high), position - low)
    return enlarge @ smoothing


_CELLS_TO_PIXELS = _cells_to_pixels()


def _background(smooth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A smooth background field and the pixels that are surely background.

    Generated backgrounds are tinted and blotchy, so one colour leaves their blotches as
    "objects" or, through a threshold raised to ignore them, hides real objects of a similar
    hue. The canvas border ring (mostly background even when an object touches the edge) gives
    a first colour; pixels clearly away from it are set aside, and the rest are averaged in
    ``BACKGROUND_CELL`` cells, smoothed across cells (which also fills cells that objects
    cover) and enlarged back to the canvas.

    Returns:
        ``(field (H, W, 3) float32, clear (H, W) bool)``.
    """
    first = np.median(smooth[_RING], axis=0)
    distance = np.sqrt(_squared_norm((smooth - first) @ _OPPONENT))
    level = _noise_level(distance[_RING], BACKGROUND_K, FG_MIN_DISTANCE / 2)
    clear = ~ndi.binary_dilation(distance > level, _CROSS, iterations=2)
    if clear.sum() < _RING.sum():  # hardly any background left: trust the ring alone
        return np.broadcast_to(first, smooth.shape), _RING
    cells = WORK_SIZE // BACKGROUND_CELL
    shape = (cells, BACKGROUND_CELL, cells, BACKGROUND_CELL)
    weight = clear.reshape(shape).sum(axis=(1, 3)).astype(np.float32)  # (cells, cells)
    total = (smooth * clear[..., None]).reshape(*shape, 3).sum(axis=(1, 3)).transpose(2, 0, 1)
    # Smooth across cells (normalised convolution fills the cells objects cover) and enlarge
    # bilinearly, both as one small matrix product per side.
    weight = _CELLS_TO_PIXELS @ weight @ _CELLS_TO_PIXELS.T  # (H, W)
    total = (_CELLS_TO_PIXELS @ total @ _CELLS_TO_PIXELS.T).transpose(1, 2, 0)  # (H, W, 3)
    return (total / np.maximum(weight, 1e-3)[..., None]).astype(np.float32), clear


def _noise_level(values: np.ndarray, k: float, minimum: float) -> float:
    """``max(minimum, median + k robust sigmas)`` of background distances."""
    floor = float(np.median(values))
    sigma = 1.4826 * float(np.median(np.abs(values - floor)))
    return max(minimum, floor + k * sigma)


def _hue_saturation(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV hue (degrees, 0..360) and saturation (0..1) of an (H, W, 3) array."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high = rgb.max(axis=-1)
    span = np.maximum(high - rgb.min(axis=-1), 1e-6)
    hue = np.where(
        high == r,
        ((g - b) / span) % 6.0,
        np.where(high == g, (b - r) / span + 2.0, (r - g) / span + 4.0),
    )
    return hue * 60.0, (high - rgb.min(axis=-1)) / np.maximum(high, 1e-6)


_PALETTE_HUES = np.array(
    [colorsys.rgb_to_hsv(*(c / 255 for c in PALETTE[name]))[0] * 360.0 for name in COLOURS]
)


def _hue_gap(hue: np.ndarray) -> np.ndarray:
    """Angular distance (degrees) of each hue to each palette hue: (...,) -> (..., colours)."""
    return np.abs((hue[..., None] - _PALETTE_HUES + 180.0) % 360.0 - 180.0)


# --- Pieces and coverage -------------------------------------------------------------------------


def _pieces(distance: np.ndarray, threshold: float) -> tuple[np.ndarray, list[int]]:
    """Label map of foreground pieces (0 = background) and the labels that are object-sized.

    A component found at the global threshold is re-cut at ``OBJECT_LEVEL`` of its own contrast,
    which separates neighbours joined by a faint blur bridge. Specks stay in the map, so no
    object claims their pixels, but not in the list.
    """
    components, count = ndi.label(distance > threshold, _CROSS)
    # Components too small to hold an object (noise grains, specks) keep their labels as they
    # are; only the others are re-cut and relabelled above ``count``.
    labels = components.astype(np.int32)
    objects: list[int] = []
    next_label = count + 1
    areas = np.bincount(components.ravel())
    for index, region in enumerate(ndi.find_objects(components), start=1):
        if areas[index] < MIN_AREA:
            continue
        component = components[region] == index
        labels[region][component] = 0
        values = distance[region][component]
        rank = int(CONTRAST_PERCENTILE / 100 * (values.size - 1))
        level = OBJECT_LEVEL * float(np.partition(values, rank)[rank])
        sub, _ = ndi.label(component & (distance[region] > max(threshold, level)), _CROSS)
        for sub_index, sub_region in enumerate(ndi.find_objects(sub), start=1):
            piece = sub[sub_region] == sub_index
            label, next_label = next_label, next_label + 1
            y, x = region[0].start + sub_region[0].start, region[1].start + sub_region[1].start
            labels[y : y + piece.shape[0], x : x + piece.shape[1]][piece] = label
            if piece.sum() >= MIN_AREA and max(piece.shape) >= MIN_SIDE:
                objects.append(label)
    return labels, objects


def _neighbours(labels: np.ndarray, objects: list[int]) -> list[tuple[int, int]]:
    """Pairs of object pieces at most ``SEAM_WIDTH`` px apart."""
    pairs = []
    height, width = labels.shape
    for first, region in zip(objects, _slices(labels, objects)):
        # Work on the piece's box grown by the seam: a whole-canvas dilation costs 10x more.
        grown = tuple(
            slice(max(r.start - SEAM_WIDTH, 0), min(r.stop + SEAM_WIDTH, n))
            for r, n in zip(region, (height, width))
        )
        crop = labels[grown]
        near = ndi.binary_dilation(crop == first, _CROSS, iterations=SEAM_WIDTH)
        pairs += [
            (first, int(second)) for second in np.unique(crop[near]) if second > first and second in objects
        ]
    return pairs


def _slices(labels: np.ndarray, indices: list[int]) -> list[tuple[slice, slice]]:
    """Bounding slices of the given labels."""
    found = ndi.find_objects(labels)
    return [found[index - 1] for index in indices]


# --- Reading one piece ---------------------------------------------------------------------------


@dataclass
class _Piece:
    """One foreground piece, as crops of the canvas around the pixels it owns.

    Attributes:
        mask: (h, w) bool, the piece itself.
        own: (h, w) bool, the pixels whose coverage counts towards it (the piece and its rim).
        fine: (h, w, 3) lightly smoothed RGB minus the background colour.
        noise: background noise level in the same units.
        hue, saturation: (h, w) colour of the median-filtered image.
        region: the (row, column) slices of the canvas these crops come from.
    """

    mask: np.ndarray
    own: np.ndarray
    fine: np.ndarray
    noise: float
    hue: np.ndarray
    saturation: np.ndarray
    region: tuple[slice, slice]


def _read_piece(piece: _Piece, colourless_is_shading: bool) -> list[Detected]:
    """One foreground piece -> one Detected, two when it is two touching shapes, or none.

    Args:
        piece: the piece.
        colourless_is_shading: every object of the world is a saturated colour, so in a colour
            image a piece with no clear hue is background texture or shading, not an object.
            (In a grayscale image nothing has a hue: such pieces are reported, colour None.)
    """
    votes, labels = _colour_votes(piece)
    total = sum(votes.values())
    coloured = total - votes.get(None, 0)
    ranked = sorted(((v, k) for k, v in votes.items() if k is not None), reverse=True)
    inks = [None]
    if not coloured or coloured < COLOURED_FRACTION * total:
        if colourless_is_shading:
            return []
        colour, purity, colour_note = None, 1.0, "no clear colour"
    elif len(ranked) > 1 and ranked[1][0] >= MIX_FRACTION * coloured:
        first, second = ranked[0][1], ranked[1][1]
        inks = [first, second]
        alpha = _coverage(piece, labels, inks)
        parts = _split_by_colour(piece, alpha, first, second)
        if parts is not None:
            return parts
        colour, purity = None, 1.0
        colour_note = (
            f"two colours: {first} {ranked[0][0] / coloured:.0%}, {second} {ranked[1][0] / coloured:.0%}"
        )
    else:
        colour, purity, colour_note = ranked[0][1], ranked[0][0] / coloured, ""
    read = _read_shape(piece.mask, _coverage(piece, labels, inks), piece.region)
    note = "; ".join(n for n in (read.note, colour_note) if n)
    return [Detected(read.shape, colour, read.size, read.box, round(read.confidence * purity, 3), note)]


def _colour_votes(piece: _Piece) -> tuple[dict[str | None, int], np.ndarray]:
    """Pixel counts per palette colour (None = no usable hue) over the piece's interior.

    The interior (one pixel in from the edge) avoids pixels mixed with the background.

    Returns:
        The votes, and the (h, w) palette index each interior pixel voted for (-1: none, or not
        interior).
    """
    interior = ndi.binary_erosion(piece.mask, _CROSS)
    if interior.sum() < MIN_AREA // 2:
        interior = piece.mask
    gap = _hue_gap(piece.hue[interior])  # (n, colours)
    nearest = gap.argmin(axis=1)
    usable = (piece.saturation[interior] >= CHROMA_MIN) & (gap.min(axis=1) <= HUE_TOLERANCE)
    counts = np.bincount(nearest[usable], minlength=len(COLOURS))
    votes: dict[str | None, int] = {name: int(c) for name, c in zip(COLOURS, counts) if c}
    votes[None] = int((~usable).sum())
    labels = np.full(piece.mask.shape, -1)
    labels[interior] = np.where(usable, nearest, -1)
    return votes, labels


def _coverage(piece: _Piece, labels: np.ndarray, inks: list) -> np.ndarray:
    """Soft coverage (h, w) in 0..1 of the piece: 1 inside, fractional on its edges.

    Each pixel is unmixed as background + a * ink1 (+ b * ink2) by least squares, where the
    inks are the piece's own mean colours (one, or two for a bicolour piece); coverage is
    a (+ b). Unlike a distance ratio this keeps the seam of a bicolour object, a blend of its
    two colours that may be as close to the background as either, fully covered, and it ignores
    noise and halos across the ink direction.
    """
    if inks == [None]:
        core = labels >= 0 if (labels >= 0).sum() >= MIN_AREA // 2 else piece.mask
        directions = [piece.fine[core].mean(axis=0)]
    else:
        directions = []
        for ink in inks:
            chosen = labels == COLOURS.index(ink)
            directions.append(piece.fine[chosen].mean(axis=0))
    basis = np.stack(directions, axis=1)  # (3, inks)
    # Least squares through the normal equations; a tiny ridge keeps close inks stable.
    gram = basis.T @ basis + np.eye(len(directions)) * (1e-3 * float(np.trace(basis.T @ basis)) + 1e-6)
    weights = piece.fine @ (basis @ np.linalg.inv(gram)).astype(np.float32)  # (h, w, inks)
    amount = np.clip(weights, 0.0, None).sum(axis=-1)
    contrast = float(np.sqrt(np.min(np.sum(basis**2, axis=0))))
    # Noise comparable to the contrast would push the start of coverage up to the object itself.
    zero = min(max(ALPHA_ZERO, piece.noise / max(contrast, 1.0)), ALPHA_ZERO_MAX)
    return np.clip((amount - zero) / (1.0 - zero), 0.0, 1.0) * piece.own


def _split_by_colour(piece: _Piece, alpha, first, second) -> list[Detected] | None:
    """Two touching objects of different colours, or None when the parts are not clean shapes.

    A bicolour object's halves are half-shapes and an object lying on another leaves the lower
    one partly hidden, so both fail here and stay one object; only two whole shapes split.
    """
    gap = _hue_gap(piece.hue)
    closer = gap[..., COLOURS.index(first)] <= gap[..., COLOURS.index(second)]
    out = []
    for colour, part in ((first, piece.mask & closer), (second, piece.mask & ~closer)):
        # The largest connected part only: stray pixels of the other colour are edge mixing.
        labels, n = ndi.label(ndi.binary_opening(part, _CROSS), _CROSS)
        if n == 0:
            return None
        part = labels == 1 + int(np.bincount(labels.ravel())[1:].argmax())
        if part.sum() < 2 * MIN_AREA:
            return None
        own = ndi.binary_dilation(part, _CROSS, iterations=OWN_RADIUS) & ~(piece.mask & ~part)
        read = _read_shape(part, alpha * own, piece.region)
        if read.shape is None or read.score < SPLIT_MIN_SCORE:
            return None
        out.append(
            Detected(
                read.shape, colour, read.size, read.box, round(read.confidence, 3), "touching another object"
            )
        )
    return out


# --- Shape ---------------------------------------------------------------------------------------


class _ShapeRead(NamedTuple):
    shape: str | None  # None = unrecognised blob
    score: float  # soft IoU of the best template
    confidence: float  # 0..1; 0 for a blob
    box: tuple[float, float, float, float]  # normalised
    size: str | None
    note: str


def _rotate(points, degrees, centre):
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    cx, cy = centre
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def _template_bank() -> tuple[np.ndarray, list[str]]:
    """Sharp soft templates (n, GRID*GRID): each shape at each tilt, in its box's padded frame.

    The frame spans the box plus ``PAD`` of its side on every side, so a piece that spills out
    of the box its moments imply (a merged blob) pays for it. Tilting is about the box centre
    and keeps the box: a tilted square has the same spread as an upright one.
    """
    big = GRID * 8
    unit = big / (1 + 2 * PAD)
    lo, hi = PAD * unit, (1 + PAD) * unit
    templates, names = [], []
    for shape in SHAPES:
        for angle in ANGLES if shape != "circle" else (0.0,):
            canvas = Image.new("L", (big, big), 0)
            draw = ImageDraw.Draw(canvas)
            kind, geometry = shape_outline(shape, (lo, lo, hi, hi))
            if kind == "ellipse":
                draw.ellipse(geometry, fill=255)
            else:
                draw.polygon(_rotate(geometry, angle, (big / 2, big / 2)), fill=255)
            soft = np.asarray(canvas.resize((GRID, GRID), Image.Resampling.BOX), np.float32) / 255.0
            templates.append(soft.ravel())
            names.append(shape)
    return np.stack(templates), names


def _shape_moments() -> dict[str, tuple[float, float, float]]:
    """Per shape, in units of its box: the centroid's vertical offset from the box centre and
    the horizontal and vertical standard deviations of its area."""
    big = 400
    centres = (np.arange(big) + 0.5) / big
    out = {}
    for shape in SHAPES:
        canvas = Image.new("L", (big, big), 0)
        kind, geometry = shape_outline(shape, (0, 0, big, big))
        draw = ImageDraw.Draw(canvas)
        (draw.ellipse if kind == "ellipse" else draw.polygon)(geometry, fill=255)
        weight = np.asarray(canvas, np.float64)
        rows, cols = weight.sum(axis=1) / weight.sum(), weight.sum(axis=0) / weight.sum()
        my, mx = (rows * centres).sum(), (cols * centres).sum()
        sy = math.sqrt((rows * (centres - my) ** 2).sum())
        sx = math.sqrt((cols * (centres - mx) ** 2).sum())
        out[shape] = (my - 0.5, sx, sy)
    return out


_TEMPLATES, _TEMPLATE_SHAPES = _template_bank()
_SHAPE_ROWS = {shape: np.array([i for i, s in enumerate(_TEMPLATE_SHAPES) if s == shape]) for shape in SHAPES}
_BANK_SIGMAS = np.arange(0.0, 4.01, 0.25)  # grid cells
# Every template at every blur (levels, templates, GRID*GRID); a piece uses the levels that
# correspond to BLUR_LEVELS pixels at its own scale.
_BANKS = np.stack(
    [
        ndi.gaussian_filter(_TEMPLATES.reshape(-1, GRID, GRID), (0, s, s), mode="constant").reshape(
            len(_TEMPLATES), -1
        )
        for s in _BANK_SIGMAS
    ]
)
_BANK_SUMS = _BANKS.sum(axis=2)
_MOMENTS = _shape_moments()
_STEPS = (np.arange(GRID) + 0.5) / GRID
# Variance the coverage map adds to a shape's own: the pixel footprint and FINE_SIGMA.
_ADDED_VARIANCE = 1.0 / 12.0 + FINE_SIGMA**2


_SHAPE_OFFSET, _SHAPE_SX, _SHAPE_SY = (np.array(v) for v in zip(*(_MOMENTS[s] for s in SHAPES)))
_ROW_SHAPE = np.array([SHAPES.index(s) for s in _TEMPLATE_SHAPES])  # shape index of each template
_SHAPE_STARTS = np.array([int(_SHAPE_ROWS[s][0]) for s in SHAPES])  # templates are grouped by shape


def _read_shape(mask, alpha, region) -> _ShapeRead:
    """Recognise the shape of one piece, or call it a blob.

    Args:
        mask: (h, w) bool, the piece.
        alpha: (h, w) its soft coverage.
        region: the canvas slices of the crops, to turn boxes into canvas coordinates.
    """
    ys, xs = np.nonzero(alpha)
    weight = alpha[ys, xs]
    total = float(weight.sum())
    top, left = region[0].start, region[1].start
    if total < MIN_AREA / 2:  # the piece stands out, but too little of it to have a shape
        return _blob(mask, alpha, top, left, 0.0, "too faint to shape")
    cy, cx = float(weight @ ys) / total + 0.5, float(weight @ xs) / total + 0.5
    sy = math.sqrt(max(float(weight @ (ys + 0.5 - cy) ** 2) / total - _ADDED_VARIANCE, 0.25))
    sx = math.sqrt(max(float(weight @ (xs + 0.5 - cx) ** 2) / total - _ADDED_VARIANCE, 0.25))

    # The box each shape would have (4 shapes), and its padded frame sampled on the grid.
    width, height = sx / _SHAPE_SX, sy / _SHAPE_SY
    x0, y0 = cx - width / 2, cy - _SHAPE_OFFSET * height - height / 2
    span_x, span_y = width * (1 + 2 * PAD), height * (1 + 2 * PAD)
    grid_y = (y0 - PAD * height)[:, None] + _STEPS * span_y[:, None] - 0.5  # (4, GRID)
    grid_x = (x0 - PAD * width)[:, None] + _STEPS * span_x[:, None] - 0.5
    coords = np.stack(np.broadcast_arrays(grid_y[:, :, None], grid_x[:, None, :]))  # (2, 4, G, G)
    grids = ndi.map_coordinates(alpha, coords, order=1, mode="constant").reshape(len(SHAPES), -1)
    grid_sums = grids.sum(axis=1)
    # Coverage the frame misses (a merged blob's far part) counts against every template.
    outside = np.maximum(0.0, total * GRID * GRID / (span_x * span_y) - grid_sums)
    # Each template at the bank blurs matching BLUR_LEVELS pixels at its shape's scale.
    scale = GRID / np.sqrt(span_x * span_y)  # grid cells per pixel, per shape
    levels = np.abs(_BANK_SIGMAS[:, None, None] - np.multiply.outer(BLUR_LEVELS, scale)).argmin(axis=0)
    row_levels = levels[:, _ROW_SHAPE]  # (blurs, templates)
    bank = _BANKS[row_levels, np.arange(len(_ROW_SHAPE))]  # (blurs, templates, G*G)
    overlap = np.minimum(bank, grids[_ROW_SHAPE]).sum(axis=-1)
    union = _BANK_SUMS[row_levels, np.arange(len(_ROW_SHAPE))] + (grid_sums + outside)[_ROW_SHAPE] - overlap
    iou = overlap / union  # (blurs, templates)
    best_blur = iou.argmax(axis=0)
    per_template = iou[best_blur, np.arange(len(_ROW_SHAPE))]
    scores = np.maximum.reduceat(per_template, _SHAPE_STARTS)  # (4,)
    fits = {}  # shape -> (iou, template, grid, box in crop pixels)
    for k, shape in enumerate(SHAPES):
        row = _SHAPE_STARTS[k] + int(per_template[_SHAPE_ROWS[shape]].argmax())
        box = (float(x0[k]), float(y0[k]), float(x0[k] + width[k]), float(y0[k] + height[k]))
        fits[shape] = (float(scores[k]), bank[best_blur[row], row], grids[k], box)

    shape, runner = sorted(fits, key=lambda k: fits[k][0], reverse=True)[:2]
    score, template, grid, (x0, y0, x1, y1) = fits[shape]
    margin = score - fits[runner][0]
    aspect = (x1 - x0) / max(y1 - y0, 1e-6)
    reason = ""
    if score < SHAPE_MIN_SCORE:
        reason = f"best match {shape} only {score:.2f}"
    elif margin < SHAPE_MIN_MARGIN:
        reason = f"{shape} {score:.2f} vs {runner} {fits[runner][0]:.2f}: too close to call"
    elif not ASPECT_RANGE[0] <= aspect <= ASPECT_RANGE[1]:
        reason = f"box aspect {aspect:.2f} fits no shape"
    else:
        # Blur, noise and tilt leave thin or scattered mismatch; a second shape stuck on (and
        # the fit stretched to cover it) leaves a lump or a notch that survives smoothing.
        lump = float(np.abs(ndi.gaussian_filter((grid - template).reshape(GRID, GRID), LUMP_SIGMA)).max())
        if lump > LUMP_MAX:
            reason = f"{shape}-like but with a lump or notch (merged shapes?)"
    if reason:
        return _blob(mask, alpha, top, left, score, reason)
    box = _normalised((x0 + left, y0 + top, x1 + left, y1 + top))
    # Confidence grows with the IoU above the bar and with the lead over the runner-up.
    confidence = min(1.0, 0.5 + (score - SHAPE_MIN_SCORE) / (1 - SHAPE_MIN_SCORE) * 0.3 + margin * 2)
    return _ShapeRead(shape, score, confidence, box, size_of_box(box), "")


def _blob(mask, alpha, top, left, score, reason) -> _ShapeRead:
    """An unrecognised blob over the extent of its coverage (or of the piece)."""
    rows, cols = np.nonzero(alpha >= 0.5) if (alpha >= 0.5).any() else np.nonzero(mask)
    box = (cols.min() + left, rows.min() + top, cols.max() + 1 + left, rows.max() + 1 + top)
    return _ShapeRead(None, score, 0.0, _normalised(box), None, f"unrecognised blob ({reason})")


def _normalised(box) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(np.clip(v / WORK_SIZE, 0.0, 1.0)) for v in box)
    return (x0, y0, max(x1, x0 + 1e-3), max(y1, y0 + 1e-3))
