"""The deterministic planner: step 4 of the correction loop, expected vs detected -> edit operations.

SLD asks a text-only LLM for an updated layout and then diffs two lists of names with IoU > 0.9,
which turns a recolour of "palm tree" into delete + add and gives two missing motorcycles the
same box (``../shared/notes/anchor-sld.md``, section 5). Here the plan is computed directly from
typed data, per object group of :class:`~selfcorrect.diffusion.expected.Expected`:

1. **Instances** of a group are the detections of its full phrase (``"red circle"``). Detections
   of its bare noun (``"circle"``) that overlap no full-phrase detection of any group are
   *unclaimed*: objects of the right kind with the wrong attributes.
2. **Absent groups** (``count == 0``): every instance is deleted.
3. **Too few**: an unclaimed object of the same noun is recoloured (attribute change, in place)
   before anything is added; the rest are added at free places (:func:`free_box`).
4. **Too many** (exact counts): the least confident extra instances are deleted.
5. **Relations**: every subject instance that does not hold the relation to every reference
   instance is moved to a free place that does; added objects are placed so that they hold it.

A relation holds when the centre offset points the right way and dominates the other axis, and
the two boxes are apart along it by at least a quarter of their summed widths (heights): a
margin at which GenEval-style centre rules agree. Places are searched on a grid, best first by
distance from everything already there, so the same input always gives the same plan.
"""

from __future__ import annotations

from collections.abc import Sequence

from selfcorrect.diffusion.edits import Box, EditOp
from selfcorrect.diffusion.expected import Expected
from selfcorrect.vision.detectors import box_iou as iou

DEFAULT_SIDE = 0.25  # side of a placed object when nothing of its kind was detected
GRID = 21  # candidate centres per axis


def holds(a: Box, relation: str, b: Box) -> bool:
    """Whether box ``a`` is ``relation`` (left of / right of / above / below) box ``b``."""
    dx = (a[0] + a[2]) / 2 - (b[0] + b[2]) / 2
    dy = (a[1] + a[3]) / 2 - (b[1] + b[3]) / 2
    gap_x = ((a[2] - a[0]) + (b[2] - b[0])) / 4
    gap_y = ((a[3] - a[1]) + (b[3] - b[1])) / 4
    if relation == "left of":
        return dx <= -gap_x and abs(dx) > abs(dy)
    if relation == "right of":
        return dx >= gap_x and abs(dx) > abs(dy)
    if relation == "above":
        return dy <= -gap_y and abs(dy) > abs(dx)
    if relation == "below":
        return dy >= gap_y and abs(dy) > abs(dx)
    raise ValueError(f"unknown relation {relation!r}")


def free_box(
    side: float,
    occupied: Sequence[Box],
    constraints: Sequence[tuple[str, Box, bool]] = (),
) -> Box:
    """The place for a new ``side`` x ``side`` object, far from ``occupied`` boxes.

    Args:
        side: the object's width and height (normalised).
        occupied: boxes to stay away from.
        constraints: ``(relation, other, subject)``: the new box must be ``relation`` ``other``
            (``subject`` True) or ``other`` must be ``relation`` the new box (False).

    Returns:
        The candidate on a :data:`GRID` x :data:`GRID` grid of centres that satisfies every
        constraint and lies farthest from the nearest occupied box's centre (the constraint
        that holds most often when none satisfies all of them).
    """
    best, best_key = None, None
    half = side / 2
    for j in range(GRID):
        for i in range(GRID):
            cx = half + (1 - side) * i / (GRID - 1)
            cy = half + (1 - side) * j / (GRID - 1)
            box = (cx - half, cy - half, cx + half, cy + half)
            satisfied = sum(
                holds(box, rel, other) if subject else holds(other, rel, box)
                for rel, other, subject in constraints
            )
            nearest = min(
                (((cx - (o[0] + o[2]) / 2) ** 2 + (cy - (o[1] + o[3]) / 2) ** 2) ** 0.5 for o in occupied),
                default=1.0,
            )
            overlap = max((iou(box, o) for o in occupied), default=0.0)
            key = (satisfied, -overlap > -0.05, round(nearest, 6))
            if best_key is None or key > best_key:
                best, best_key = box, key
    return best


def queries(expected: Expected) -> list[str]:
    """The phrases to detect: each group's full phrase, then bare nouns not already asked."""
    phrases = [o.phrase() for o in expected.objects]
    for o in expected.objects:
        if o.noun not in phrases:
            phrases.append(o.noun)
    return list(dict.fromkeys(phrases))


def plan(
    expected: Expected,
    detections: dict[str, Sequence],
    failing: set[int] | None = None,
    avoid: Sequence[Box] = (),
) -> list[EditOp]:
    """Edit operations that turn the detected layout into the expected one.

    Args:
        expected: what the prompt asks for.
        detections: phrase -> detections (objects with ``box`` and ``score``), for every phrase
            of :func:`queries`; a missing phrase counts as nothing found.
        failing: indexes of requirements a critic found failing, numbered as
            :class:`Expected` lists them (object groups, then relations); None plans for all.
            Groups and relations the critic passed are left alone.
        avoid: boxes of things the detector did not name (e.g.
            :func:`~selfcorrect.diffusion.edits.salient_boxes`); new objects are placed away
            from them too.

    Returns:
        The operations, in a fixed order (groups in prompt order, then relations).
    """
    groups = expected.objects
    found, unclaimed = _found_and_unclaimed(expected, detections)
    full = [found[g.phrase()] for g in groups]
    sides = [(d.box[2] - d.box[0] + d.box[3] - d.box[1]) / 2 for ds in found.values() for d in ds]
    side = sorted(sides)[len(sides) // 2] if sides else DEFAULT_SIDE
    layout: dict[int, list[Box]] = {k: [d.box for d in full[k]] for k in range(len(groups))}
    occupied = [d.box for ds in found.values() for d in ds] + list(avoid)
    ops: list[EditOp] = []

    def wanted(k: int) -> bool:
        return failing is None or k in failing

    def constraints(k: int) -> list[tuple[str, Box, bool]]:
        out = []
        for rel in expected.relations:
            if rel.subject == k:
                out += [(rel.relation, b, True) for b in layout[rel.reference]]
            if rel.reference == k:
                out += [(rel.relation, a, False) for a in layout[rel.subject]]
        return out

    for k, group in enumerate(groups):
        if not wanted(k):
            continue
        phrase, have = group.phrase(), full[k]
        if group.count == 0:
            for d in have:
                ops.append(
                    EditOp(
                        "delete", phrase, source=d.box, reason=f"the prompt asks for no {group.phrase(True)}"
                    )
                )
                occupied.remove(d.box)
            layout[k] = []
            continue
        missing = group.count - len(have)
        for d in unclaimed.get(group.noun, [])[: max(0, missing)]:
            unclaimed[group.noun].remove(d)
            ops.append(
                EditOp(
                    "recolour",
                    phrase,
                    target=d.box,
                    source=d.box,
                    reason=f"a {group.noun} should be {phrase}",
                )
            )
            layout[k].append(d.box)
            missing -= 1
        for _ in range(max(0, missing)):
            box = free_box(side, occupied, constraints(k))
            ops.append(
                EditOp(
                    "add", phrase, target=box, reason=f"{group.count} {phrase} wanted, {len(layout[k])} found"
                )
            )
            layout[k].append(box)
            occupied.append(box)
        if group.exact and len(have) > group.count:
            for d in have[group.count :]:  # the least confident
                ops.append(
                    EditOp(
                        "delete",
                        phrase,
                        source=d.box,
                        reason=f"exactly {group.count} {phrase} wanted, {len(have)} found",
                    )
                )
                layout[k].remove(d.box)
                occupied.remove(d.box)

    for r, rel in enumerate(expected.relations):
        if not wanted(len(groups) + r):
            continue
        for a in list(layout[rel.subject]):
            if all(holds(a, rel.relation, b) for b in layout[rel.reference]):
                continue
            others = [o for o in occupied if o != a]
            box = free_box(a[2] - a[0], others, constraints(rel.subject))
            phrase = groups[rel.subject].phrase()
            added = [op for op in ops if op.kind in ("add", "recolour") and op.target == a]
            if added:  # placed by this plan: re-place it rather than move it
                ops[ops.index(added[0])] = EditOp(
                    added[0].kind, phrase, box, added[0].source, added[0].reason
                )
            else:
                ops.append(
                    EditOp(
                        "move",
                        phrase,
                        target=box,
                        source=a,
                        reason=f"{phrase} should be {rel.relation} {groups[rel.reference].phrase()}",
                    )
                )
            layout[rel.subject][layout[rel.subject].index(a)] = box
            occupied = others + [box]
    return ops


def plan_from_layout(
    expected: Expected,
    detections: dict[str, Sequence],
    layout: Sequence[tuple[str, Box]],
) -> list[EditOp]:
    """Edit operations that turn the detected layout into a proposed one (SLD's LLM planning).

    SLD asks its LLM for the corrected layout and diffs it against the detections by name and
    IoU > 0.9, so a recolour becomes delete + add and a moved object is deleted and drawn anew
    (``notes/anchor-sld.md``). Here each proposed object is matched, in order, to the detection it
    least changes:

    1. a detection of its phrase overlapping it (IoU >= 0.5): kept as it is;
    2. else the nearest detection of its phrase: moved;
    3. else an unclaimed detection of its bare noun (right kind, wrong attributes): recoloured
       in place (and moved too when the proposed box is elsewhere);
    4. else: added at the proposed box.

    Detections of an expected group's phrase that no proposed object took are deleted.

    Args:
        expected: what the prompt asks for (its phrases are the ones ``layout`` may use).
        detections: phrase -> detections (with ``box`` and ``score``), as for :func:`plan`.
        layout: the proposed objects, ``(phrase, box)``, e.g. from
            :meth:`~selfcorrect.diffusion.controller.Controller.layout`.

    Returns:
        The operations: per proposed object in order, then the deletions.
    """
    phrases = [g.phrase() for g in expected.objects]
    found, unclaimed = _found_and_unclaimed(expected, detections)
    taken: list[Box] = []  # detections a proposed object kept, moved or recoloured

    def free(boxes) -> list[Box]:
        return [b for b in boxes if b not in taken]

    ops: list[EditOp] = []
    for phrase, box in layout:
        noun = expected.objects[phrases.index(phrase)].noun
        mine = free(d.box for d in found[phrase])
        overlapping = [b for b in mine if iou(b, box) >= 0.5]
        others = free(d.box for d in unclaimed.get(noun, []))
        if overlapping:
            taken.append(max(overlapping, key=lambda b: iou(b, box)))
        elif mine:
            source = min(mine, key=lambda b: _distance(b, box))
            taken.append(source)
            ops.append(
                EditOp("move", phrase, target=box, source=source, reason="the proposed layout moves it")
            )
        elif others:
            source = min(others, key=lambda b: _distance(b, box))
            taken.append(source)
            ops.append(
                EditOp(
                    "recolour", phrase, target=source, source=source, reason=f"a {noun} should be {phrase}"
                )
            )
            if iou(source, box) < 0.5:
                ops.append(
                    EditOp("move", phrase, target=box, source=source, reason="the proposed layout moves it")
                )
        else:
            ops.append(EditOp("add", phrase, target=box, reason="the proposed layout has it"))
    for phrase in phrases:
        for source in free(d.box for d in found[phrase]):
            taken.append(source)  # one delete per box, whichever groups' phrases found it
            ops.append(EditOp("delete", phrase, source=source, reason="the proposed layout leaves it out"))
    return ops


def _found_and_unclaimed(expected: Expected, detections: dict[str, Sequence]) -> tuple[dict, dict]:
    """The detections of every phrase of :func:`queries`, most confident first, and per noun of a
    group with attributes the *unclaimed* ones: detections of the bare noun that overlap no
    detection of any group's full phrase (objects of the right kind with the wrong attributes)."""
    found = {p: sorted(detections.get(p, ()), key=lambda d: -d.score) for p in queries(expected)}
    claimed = [d.box for g in expected.objects for d in found[g.phrase()]]
    unclaimed = {
        g.noun: [d for d in found[g.noun] if all(iou(d.box, c) < 0.5 for c in claimed)]
        for g in expected.objects
        if g.attributes
    }
    return found, unclaimed


def _distance(a: Box, b: Box) -> float:
    """Squared distance between box centres."""
    return ((a[0] + a[2]) - (b[0] + b[2])) ** 2 / 4 + ((a[1] + a[3]) - (b[1] + b[3])) ** 2 / 4
