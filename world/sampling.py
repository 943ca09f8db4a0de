"""Seeded scene sampling: scenes that satisfy given requirements, and free random scenes."""

from __future__ import annotations

import random

from selfcorrect.errors import UnsatisfiableError
from selfcorrect.world.requirements import Requirements, evaluate
from selfcorrect.world.scene import (
    COLOURS,
    DEFAULT_BACKGROUND,
    MAX_OBJECTS,
    SHAPES,
    SIZE_RANGES,
    SIZES,
    Scene,
    WorldObject,
    relative_position,
)

EDGE_MARGIN = 0.03  # free canvas border around every object
MIN_GAP = 0.05  # free space between any two boxes, so no object touches or hides another
PLACEMENT_TRIES = 200  # box placements per object before the layout is restarted
LAYOUT_TRIES = 500  # whole layouts before a prompt is declared unsatisfiable (diagonal relations need many)


def sample_scene(
    requirements: Requirements,
    seed: int = 0,
    *,
    distractors: int = 0,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    texture: float = 0.0,
) -> Scene:
    """A random scene that satisfies ``requirements``, deterministic for ``seed``.

    Unspecified attributes (colour, size) are drawn at random. Relations are laid out clearly:
    a required relation holds and no diagonal second relation does.

    Args:
        requirements: what the scene must show.
        seed: the random seed.
        distractors: extra random objects that do not break any requirement.
        background: background colour.
        texture: background texture amplitude (see :class:`Scene`).

    Raises:
        UnsatisfiableError: more than :data:`MAX_OBJECTS` objects, or no layout found (a
            contradiction such as "two circles and no circles").
    """
    needed = requirements.min_objects + distractors
    if needed > MAX_OBJECTS:
        raise UnsatisfiableError(
            f"the prompt needs {needed} objects; the world fits at most {MAX_OBJECTS} on a canvas"
        )
    rng = random.Random(seed)
    for _ in range(LAYOUT_TRIES):
        specs = []  # (shape, colour, size) per object to place
        for req in requirements.objects:
            for _ in range(req.count):
                q = req.query
                specs.append((q.shape, q.colour or rng.choice(COLOURS), q.size or rng.choice(SIZES)))
        for _ in range(distractors):
            specs.append((rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES)))
        objects = _place(specs, rng)
        if objects is None:
            continue
        scene = Scene(tuple(objects), background=background, texture=texture, seed=seed)
        if all(r.passed for r in evaluate(scene.objects, requirements)) and _clear_relations(
            scene, requirements
        ):
            return scene
    raise UnsatisfiableError(
        f"no scene satisfies {'; '.join(requirements.describe())!r}: the prompt contradicts itself"
        " or cannot be laid out"
    )


def random_scene(
    seed: int,
    *,
    min_objects: int = 1,
    max_objects: int = 5,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    texture: float = 0.0,
) -> Scene:
    """A scene of ``min_objects..max_objects`` random objects (for training data)."""
    rng = random.Random(seed)
    n = rng.randint(min_objects, max_objects)
    for _ in range(LAYOUT_TRIES):
        specs = [(rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES)) for _ in range(n)]
        objects = _place(specs, rng)
        if objects is not None:
            return Scene(tuple(objects), background=background, texture=texture, seed=seed)
    raise UnsatisfiableError(f"could not place {n} objects")


def _place(specs, rng: random.Random) -> list[WorldObject] | None:
    # Large objects first: they are the hardest to fit.
    order = sorted(range(len(specs)), key=lambda i: specs[i][2] != "large")
    placed: dict[int, WorldObject] = {}
    for i in order:
        shape, colour, size = specs[i]
        lo, hi = SIZE_RANGES[size]
        for _ in range(PLACEMENT_TRIES):
            side = rng.uniform(lo, hi)
            x0 = rng.uniform(EDGE_MARGIN, 1 - EDGE_MARGIN - side)
            y0 = rng.uniform(EDGE_MARGIN, 1 - EDGE_MARGIN - side)
            box = (x0, y0, x0 + side, y0 + side)
            if all(_apart(box, o.box) for o in placed.values()):
                placed[i] = WorldObject(shape, colour, size, box)
                break
        else:
            return None
    return [placed[i] for i in range(len(specs))]


def _apart(a, b) -> bool:
    return (
        a[2] + MIN_GAP <= b[0] or b[2] + MIN_GAP <= a[0] or a[3] + MIN_GAP <= b[1] or b[3] + MIN_GAP <= a[1]
    )


def _clear_relations(scene: Scene, requirements: Requirements) -> bool:
    # A sampled scene should be an unambiguous example: between the objects of two related
    # groups, exactly the required relations hold (no accidental diagonal second relation).
    wanted: dict[tuple[int, int], set[str]] = {}
    for rel in requirements.relations:
        wanted.setdefault((rel.subject, rel.reference), set()).add(rel.relation)
    for (s, r), relations in wanted.items():
        subjects = [o for o in scene.objects if requirements.objects[s].query.matches(o)]
        refs = [o for o in scene.objects if requirements.objects[r].query.matches(o)]
        for a in subjects:
            for b in refs:
                if a is not b and relative_position(a.box, b.box) != relations:
                    return False
    return True
