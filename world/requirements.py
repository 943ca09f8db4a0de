"""What a prompt asks for, and the one function that decides whether a set of objects satisfies it.

:func:`evaluate` runs on anything with ``shape``, ``colour``, ``size`` and ``box`` attributes:
the ground-truth :class:`~selfcorrect.world.scene.WorldObject` of a scene, or the oracle's
:class:`~selfcorrect.world.oracle.Detected` objects read from an image. Using the same function
for both is what makes the oracle's self-test meaningful.

Semantics (documented in the README, tested in ``tests/test_requirements.py``):

* ``"a red circle"``: at least one red circle (GenEval's ``include count>=1``).
* ``"two red circles"``: exactly two red circles (number words one..four are exact counts);
  other objects, green circles included, do not matter.
* ``"no circles"``: zero circles.
* ``"A left of B"``: at least one A and one B, and every (A, B) pair holds the relation under
  GenEval's centre-offset rule (:func:`~selfcorrect.world.scene.relative_position`).
* An exact count (zero included) also fails when an unrecognised blob in the image could be
  one more instance: the count cannot be verified.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from selfcorrect.world.scene import COLOURS, RELATIONS, SHAPES, SIZES, relative_position

CATEGORIES: tuple[str, ...] = (
    "single_object",
    "two_objects",
    "counting",
    "colors",
    "position",
    "color_attribution",
    "negation",
)


@dataclass(frozen=True)
class ObjectQuery:
    """Which objects a requirement is about: a shape, optionally with colour and size."""

    shape: str
    colour: str | None = None
    size: str | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.colour is not None and self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}")
        if self.size is not None and self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}")

    def matches(self, obj) -> bool:
        """True if ``obj`` (a WorldObject or a Detected) is a recognised instance of the query."""
        if obj.shape != self.shape:
            return False
        if self.colour is not None and obj.colour != self.colour:
            return False
        return self.size is None or obj.size == self.size

    def could_be(self, obj) -> bool:
        """True if an unrecognised ``obj`` (shape None) might still be an instance."""
        if obj.shape is not None:
            return False
        return self.colour is None or obj.colour in (None, self.colour)

    def phrase(self, plural: bool = False) -> str:
        """``"small red circle"`` / ``"small red circles"``."""
        noun = self.shape + ("es" if plural and self.shape == "cross" else "s" if plural else "")
        return " ".join(w for w in (self.size, self.colour, noun) if w)


@dataclass(frozen=True)
class CountRequirement:
    """``count`` objects matching ``query``: exactly (``exact``) or at least."""

    query: ObjectQuery
    count: int = 1
    exact: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.count <= 4:
            raise ValueError(f"counts go from 0 to 4, got {self.count}")
        if self.count == 0 and not self.exact:
            raise ValueError("'at least 0' is not a requirement")

    def describe(self) -> str:
        if self.count == 0:
            return f"no {self.query.phrase(plural=True)}"
        if not self.exact:
            return f"at least {_number(self.count)} {self.query.phrase(self.count > 1)}"
        return f"exactly {_number(self.count)} {self.query.phrase(self.count > 1)}"


@dataclass(frozen=True)
class RelationRequirement:
    """Object group ``subject`` is ``relation`` object group ``reference`` (indexes into
    :attr:`Requirements.objects`)."""

    subject: int
    relation: str
    reference: int

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"unknown relation {self.relation!r}")
        if self.subject == self.reference:
            raise ValueError("an object group cannot be related to itself")


@dataclass(frozen=True)
class Requirements:
    """Everything a prompt asks for.

    Attributes:
        objects: count requirements, one per object group named in the prompt.
        relations: spatial relations between object groups.
        text: the prompt they were parsed from (may be empty when built in code).
    """

    objects: tuple[CountRequirement, ...]
    relations: tuple[RelationRequirement, ...] = ()
    text: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.objects:
            raise ValueError("a prompt must ask for at least one object")
        for rel in self.relations:
            for i in (rel.subject, rel.reference):
                if not 0 <= i < len(self.objects):
                    raise ValueError(f"relation refers to object group {i}, which does not exist")
                if self.objects[i].count == 0:
                    raise ValueError("a relation cannot involve an absent object")

    @property
    def category(self) -> str:
        """The GenEval-style category this prompt belongs to (plus ``negation``)."""
        if any(r.count == 0 for r in self.objects):
            return "negation"
        if self.relations:
            return "position"
        if len(self.objects) == 1:
            req = self.objects[0]
            if req.exact:
                return "counting"
            return "colors" if req.query.colour else "single_object"
        if any(r.exact for r in self.objects):
            return "counting"
        if any(r.query.colour for r in self.objects):
            return "color_attribution"
        return "two_objects"

    @property
    def min_objects(self) -> int:
        """How many objects a scene needs at least to satisfy these requirements."""
        return sum(r.count for r in self.objects)

    def describe(self) -> list[str]:
        """One plain sentence per requirement (object counts first, then relations)."""
        out = [r.describe() for r in self.objects]
        for rel in self.relations:
            a, b = self.objects[rel.subject].query, self.objects[rel.reference].query
            out.append(f"{a.phrase()} {rel.relation} {b.phrase()}")
        return out


@dataclass(frozen=True)
class RequirementResult:
    """The verdict on one requirement.

    Attributes:
        requirement: a CountRequirement or a RelationRequirement.
        description: the requirement in words, e.g. ``"exactly two red circles"``.
        passed: whether it holds.
        reason: why, in words, e.g. ``"found 3 red circles"``.
        boxes: the boxes of the objects the verdict is about (normalised ``x0, y0, x1, y1``).
    """

    requirement: CountRequirement | RelationRequirement
    description: str
    passed: bool
    reason: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()

    def to_dict(self) -> dict:
        return {
            "requirement": self.description,
            "passed": self.passed,
            "reason": self.reason,
            "boxes": [list(b) for b in self.boxes],
        }


def evaluate(objects, requirements: Requirements) -> list[RequirementResult]:
    """Check each requirement against a list of objects.

    Args:
        objects: WorldObject or Detected instances (``shape`` may be None for an unrecognised
            blob, ``colour`` None for a mixed or unknown colour).
        requirements: what the prompt asks for.

    Returns:
        One :class:`RequirementResult` per count requirement, then one per relation.
    """
    objects = list(objects)
    descriptions = requirements.describe()
    results: list[RequirementResult] = []
    groups: list[list] = []
    for req, description in zip(requirements.objects, descriptions):
        found = [o for o in objects if req.query.matches(o)]
        groups.append(found)
        n = len(found)
        maybe = [o for o in objects if req.query.could_be(o)] if req.exact else []
        noun = req.query.phrase(plural=n != 1)
        if req.exact:
            passed = n == req.count and not maybe
        else:
            passed = n >= req.count
        reason = f"found {n} {noun}"
        if maybe:
            blob = "blob" if len(maybe) == 1 else "blobs"
            reason += f" and {len(maybe)} unrecognised {blob} that could be one, so the count is unverified"
        results.append(
            RequirementResult(req, description, passed, reason, tuple(o.box for o in found + maybe))
        )
    for rel, description in zip(requirements.relations, descriptions[len(requirements.objects) :]):
        subjects, references = groups[rel.subject], groups[rel.reference]
        boxes = tuple(o.box for o in subjects + references)
        if not subjects or not references:
            missing = requirements.objects[rel.subject if not subjects else rel.reference].query
            reason = f"no {missing.phrase()} to compare"
            results.append(RequirementResult(rel, description, False, reason, boxes))
            continue
        pairs = [(a, b) for a in subjects for b in references if a is not b]
        failing = [
            (a, b, relative_position(a.box, b.box))
            for a, b in pairs
            if rel.relation not in relative_position(a.box, b.box)
        ]
        if not pairs:  # one object cannot be compared with itself
            reason = "only one object matches both sides, nothing to compare"
            results.append(RequirementResult(rel, description, False, reason, boxes))
        elif failing:
            _, _, actual = failing[0]
            where = " and ".join(sorted(actual)) if actual else "overlapping / too close to tell"
            reason = f"the {requirements.objects[rel.subject].query.phrase()} is {where} it"
            results.append(RequirementResult(rel, description, False, reason, boxes))
        else:
            results.append(
                RequirementResult(rel, description, True, f"holds for all {len(pairs)} pair(s)", boxes)
            )
    return results


def _number(n: int) -> str:
    return ("zero", "one", "two", "three", "four")[n]
