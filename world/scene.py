"""The scene spec: the single source of truth of the embedded world.

A :class:`Scene` is a list of :class:`WorldObject` on a plain background. The image
(:func:`selfcorrect.world.render.render`), the captions (:mod:`selfcorrect.world.grammar`) and
the checks (:mod:`selfcorrect.world.requirements`) are all derived from it.

Coordinates are normalised to the canvas: ``box = (x0, y0, x1, y1)`` with ``0 <= x0 < x1 <= 1``
and ``y`` growing downwards, so one scene renders at any resolution.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

# Shapes, in the order used everywhere (vocabularies, tables, label ids).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

# Six colour names with fixed sRGB values, chosen far apart in hue (red 0°, orange ~30°,
# yellow ~50°, green ~135°, blue ~225°, purple ~280°) and all saturated, so a pale or gray
# background never looks like an object.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 140, 20),
    "yellow": (235, 215, 30),
    "green": (35, 165, 65),
    "blue": (35, 85, 220),
    "purple": (145, 55, 190),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)

# Side of an object's box as a fraction of the canvas side. The gap between the two ranges
# (0.20 .. 0.26) is what lets size be read back unambiguously from an image.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.16, 0.20), "large": (0.26, 0.31)}
SIZES: tuple[str, ...] = tuple(SIZE_RANGES)
SIZE_THRESHOLD = 0.23  # box side (fraction of canvas) separating "small" from "large"

DEFAULT_BACKGROUND: tuple[int, int, int] = (200, 200, 200)
DEFAULT_CANVAS = 64
MAX_OBJECTS = 8  # more than this cannot be placed with margins on the canvas

# GenEval's position rule (evaluation/evaluate_images.py): the centre offset is shrunk by this
# fraction of the two boxes' summed sides before its direction is read.
POSITION_THRESHOLD = 0.1
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class WorldObject:
    """One object of the world.

    Attributes:
        shape: one of :data:`SHAPES`.
        colour: one of :data:`COLOURS`.
        size: ``"small"`` or ``"large"``.
        box: ``(x0, y0, x1, y1)``, normalised to ``[0, 1]``; width == height.
    """

    shape: str
    colour: str
    size: str
    box: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; the world has {', '.join(SHAPES)}")
        if self.colour not in PALETTE:
            raise ValueError(f"unknown colour {self.colour!r}; the world has {', '.join(COLOURS)}")
        if self.size not in SIZE_RANGES:
            raise ValueError(f"unknown size {self.size!r}; the world has {', '.join(SIZES)}")
        x0, y0, x1, y1 = self.box
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ValueError(f"box {self.box} is not inside the unit canvas")

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2, (y0 + y1) / 2)

    @property
    def phrase(self) -> str:
        """``"small red circle"``: what the object is, without an article."""
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Objects on a plain background.

    Attributes:
        objects: the objects, in drawing order (they never overlap, so order does not matter).
        background: sRGB background colour.
        texture: amplitude (0..1) of mild seeded luminance noise on the background; 0 = flat.
        seed: the seed the scene was sampled with (also seeds the background texture).
    """

    objects: tuple[WorldObject, ...]
    background: tuple[int, int, int] = DEFAULT_BACKGROUND
    texture: float = 0.0
    seed: int = 0
    meta: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        """A JSON-ready dict (inverse of :meth:`from_dict`)."""
        d = asdict(self)
        d["objects"] = [asdict(o) for o in self.objects]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        objects = tuple(
            WorldObject(o["shape"], o["colour"], o["size"], tuple(o["box"])) for o in d["objects"]
        )
        return cls(
            objects=objects,
            background=tuple(d.get("background", DEFAULT_BACKGROUND)),
            texture=float(d.get("texture", 0.0)),
            seed=int(d.get("seed", 0)),
            meta=dict(d.get("meta", {})),
        )

    def with_objects(self, objects) -> Scene:
        return replace(self, objects=tuple(objects))


def size_of_box(box: tuple[float, float, float, float]) -> str:
    """``"small"`` or ``"large"`` from a box's longer side (normalised)."""
    side = max(box[2] - box[0], box[3] - box[1])
    return "small" if side < SIZE_THRESHOLD else "large"


def relative_position(box_a, box_b) -> set[str]:
    """Relations of box A to box B under GenEval's rule.

    The centre offset ``A - B`` is shrunk towards zero by ``POSITION_THRESHOLD`` times the two
    boxes' summed width (for x) and height (for y); a relation holds when its shrunk component,
    divided by the length of the unshrunk offset, exceeds 0.5. Diagonal layouts can hold two
    relations at once; overlapping centres hold none.

    Args:
        box_a, box_b: ``(x0, y0, x1, y1)`` in any common unit (y grows downwards).

    Returns:
        A subset of :data:`RELATIONS`.
    """
    ax, ay = (box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2
    bx, by = (box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2
    dx, dy = ax - bx, ay - by
    sx = POSITION_THRESHOLD * ((box_a[2] - box_a[0]) + (box_b[2] - box_b[0]))
    sy = POSITION_THRESHOLD * ((box_a[3] - box_a[1]) + (box_b[3] - box_b[1]))
    rx = math.copysign(max(abs(dx) - sx, 0.0), dx)
    ry = math.copysign(max(abs(dy) - sy, 0.0), dy)
    norm = math.hypot(dx, dy)
    if norm == 0 or (abs(rx) < 1e-3 and abs(ry) < 1e-3):
        return set()
    ux, uy = rx / norm, ry / norm
    out = set()
    if ux < -0.5:
        out.add("left of")
    if ux > 0.5:
        out.add("right of")
    if uy < -0.5:
        out.add("above")
    if uy > 0.5:
        out.add("below")
    return out


def shape_outline(shape: str, box: tuple[float, float, float, float]):
    """The outline of ``shape`` filling ``box``, in the box's units.

    Returns:
        ``("ellipse", (x0, y0, x1, y1))`` for a circle, else ``("polygon", [(x, y), ...])``.
        The renderer and the oracle's shape templates both draw from this one definition.
    """
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if shape == "circle":
        return "ellipse", (x0, y0, x1, y1)
    if shape == "square":
        return "polygon", [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":  # pointing up
        return "polygon", [(x0 + w / 2, y0), (x1, y1), (x0, y1)]
    if shape == "cross":  # a plus sign whose arms are a third of the box wide
        a, b = x0 + w / 3, x0 + 2 * w / 3
        c, d = y0 + h / 3, y0 + 2 * h / 3
        return "polygon", [
            (a, y0),
            (b, y0),
            (b, c),
            (x1, c),
            (x1, d),
            (b, d),
            (b, y1),
            (a, y1),
            (a, d),
            (x0, d),
            (x0, c),
            (a, c),
        ]
    raise ValueError(f"unknown shape {shape!r}; the world has {', '.join(SHAPES)}")
