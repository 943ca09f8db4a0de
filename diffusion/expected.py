"""What an image should contain: step 1 of the correction loop, as plain data.

The loop compares *expected* objects (from the prompt) with *detected* ones (from the image) and
plans edits from the difference. :class:`Expected` is that expectation, independent of where it
came from: the world grammar (:meth:`Expected.from_requirements`) or a controller chat model
answering in the JSON schema of :meth:`Expected.from_dict` (see
:mod:`selfcorrect.diffusion.controller`). It is SLD's parsed prompt ("Objects: [('car',
['white', 'yellow'])], Background: ..., Negation: ...") as typed, validated fields instead of
free text split on keywords.

JSON form (what a controller must emit)::

    {"objects": [{"noun": "circle", "attributes": ["red"], "count": 2, "exact": true},
                 {"noun": "square", "attributes": ["blue"], "count": 1, "exact": false}],
     "relations": [{"subject": 0, "relation": "left of", "reference": 1}],
     "background": ""}

``count`` 0 with ``exact`` true means "no such object" (negation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from selfcorrect.errors import SelfcorrectError

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
MAX_COUNT = 8  # more instances of one object than this is not a layout the planner can place


class ExpectedSchemaError(SelfcorrectError, ValueError):
    """A parsed prompt (usually a controller's JSON answer) does not fit the schema."""


@dataclass(frozen=True)
class ExpectedObject:
    """One group of objects the prompt asks for.

    Attributes:
        noun: what the object is (``"circle"``, ``"dog"``).
        attributes: adjectives in prompt order (``("small", "red")``).
        count: how many; 0 with ``exact`` means none.
        exact: exactly ``count`` (``"two dogs"``, ``"no dogs"``) or at least (``"a dog"``).
    """

    noun: str
    attributes: tuple[str, ...] = ()
    count: int = 1
    exact: bool = False

    def phrase(self, plural: bool = False) -> str:
        """``"small red circle"`` (``plural``: ``"small red circles"``), as a detector query."""
        noun = self.noun
        if plural:
            noun += "es" if noun.endswith(("s", "x", "ch", "sh")) else "s"
        return " ".join((*self.attributes, noun))


@dataclass(frozen=True)
class ExpectedRelation:
    """Group ``subject`` is ``relation`` group ``reference`` (indexes into ``Expected.objects``)."""

    subject: int
    relation: str
    reference: int


@dataclass(frozen=True)
class Expected:
    """Everything the image should show.

    Attributes:
        objects: the object groups.
        relations: spatial relations between groups (every pair of instances must hold them).
        background: a background description, if the prompt has one (else ``""``).
        prompt: the text it came from.
    """

    objects: tuple[ExpectedObject, ...]
    relations: tuple[ExpectedRelation, ...] = ()
    background: str = ""
    prompt: str = field(default="", compare=False)

    @classmethod
    def from_requirements(cls, requirements) -> Expected:
        """From a :class:`~selfcorrect.world.requirements.Requirements` of the world grammar."""
        objects = tuple(
            ExpectedObject(
                noun=r.query.shape,
                attributes=tuple(a for a in (r.query.size, r.query.colour) if a),
                count=r.count,
                exact=r.exact,
            )
            for r in requirements.objects
        )
        relations = tuple(
            ExpectedRelation(r.subject, r.relation, r.reference) for r in requirements.relations
        )
        return cls(objects, relations, prompt=requirements.text)

    @classmethod
    def from_dict(cls, data, prompt: str = "") -> Expected:
        """Validate a JSON-like dict (the module docstring's schema) into an :class:`Expected`.

        Raises:
            ExpectedSchemaError: anything missing, mistyped, out of range or inconsistent, with
                the path of the first offending field (``objects[1].count``).
        """
        if not isinstance(data, dict):
            raise ExpectedSchemaError(f"expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"objects", "relations", "background"})
        if unknown:
            raise ExpectedSchemaError(f"unknown keys: {', '.join(unknown)}")
        raw_objects = data.get("objects")
        if not isinstance(raw_objects, list) or not raw_objects:
            raise ExpectedSchemaError("objects: a non-empty list is required")
        objects = tuple(_object(o, f"objects[{i}]") for i, o in enumerate(raw_objects))
        raw_relations = data.get("relations", [])
        if not isinstance(raw_relations, list):
            raise ExpectedSchemaError("relations: must be a list")
        relations = tuple(_relation(r, f"relations[{i}]", objects) for i, r in enumerate(raw_relations))
        background = data.get("background", "")
        if not isinstance(background, str):
            raise ExpectedSchemaError("background: must be a string")
        return cls(objects, relations, background.strip(), prompt=prompt)

    def to_dict(self) -> dict:
        """The JSON form (``from_dict(e.to_dict()) == e``)."""
        return {
            "objects": [
                {"noun": o.noun, "attributes": list(o.attributes), "count": o.count, "exact": o.exact}
                for o in self.objects
            ],
            "relations": [
                {"subject": r.subject, "relation": r.relation, "reference": r.reference}
                for r in self.relations
            ],
            "background": self.background,
        }


def _object(raw, where: str) -> ExpectedObject:
    if not isinstance(raw, dict):
        raise ExpectedSchemaError(f"{where}: must be an object")
    unknown = sorted(set(raw) - {"noun", "attributes", "count", "exact"})
    if unknown:
        raise ExpectedSchemaError(f"{where}: unknown keys: {', '.join(unknown)}")
    noun = raw.get("noun")
    if not isinstance(noun, str) or not noun.strip():
        raise ExpectedSchemaError(f"{where}.noun: a non-empty string is required")
    attributes = raw.get("attributes", [])
    if not isinstance(attributes, list) or not all(isinstance(a, str) and a.strip() for a in attributes):
        raise ExpectedSchemaError(f"{where}.attributes: must be a list of non-empty strings")
    count = raw.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
        raise ExpectedSchemaError(f"{where}.count: an integer from 0 to {MAX_COUNT} is required")
    exact = raw.get("exact", False)
    if not isinstance(exact, bool):
        raise ExpectedSchemaError(f"{where}.exact: must be true or false")
    if count == 0 and not exact:
        raise ExpectedSchemaError(f"{where}: count 0 needs exact true ('no {noun}')")
    return ExpectedObject(noun.strip().lower(), tuple(a.strip().lower() for a in attributes), count, exact)


def _relation(raw, where: str, objects: tuple[ExpectedObject, ...]) -> ExpectedRelation:
    if not isinstance(raw, dict):
        raise ExpectedSchemaError(f"{where}: must be an object")
    relation = raw.get("relation")
    if relation not in RELATIONS:
        raise ExpectedSchemaError(f"{where}.relation: one of {', '.join(RELATIONS)} is required")
    ends = []
    for key in ("subject", "reference"):
        i = raw.get(key)
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(objects):
            raise ExpectedSchemaError(f"{where}.{key}: an index into objects is required")
        if objects[i].count == 0:
            raise ExpectedSchemaError(f"{where}.{key}: a relation cannot involve an absent object")
        ends.append(i)
    if ends[0] == ends[1]:
        raise ExpectedSchemaError(f"{where}: an object group cannot be related to itself")
    return ExpectedRelation(ends[0], relation, ends[1])
