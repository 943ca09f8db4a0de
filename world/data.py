"""A seeded, on-the-fly data set of world scenes: image, captions and verified question-answers.

:class:`WorldDataset` is map-style and torch-free to import; it has ``__len__`` and
``__getitem__``, so it serves as a ``torch.utils.data.Dataset`` directly (give the DataLoader a
``collate_fn`` that keeps PIL images and scenes, e.g. ``collate_fn=list``). Item ``i`` is a pure
function of ``(seed, i)``: nothing is stored, any worker can build any item.

Every caption and answer is derived from the scene spec, never from the image, and each answer
is checked against :func:`~selfcorrect.world.requirements.evaluate` (and
:func:`~selfcorrect.world.scene.relative_position`) before it is returned.

Question kinds and answer formats (:data:`QA_KINDS`):

========== ============================================ ===========================================
kind       example                                      answer
========== ============================================ ===========================================
existence  "is there a red circle?"                     "yes" / "no"
count      "how many triangles are there?"              digits "0".."4" (VQAv2's convention)
colour     "what colour is the square?"                 a colour name; asked only if one square
shape      "what shape is the red object?"              a shape name; asked only if one red object
relation   "is the circle left of the square?"          "yes" / "no" (GenEval's position rule)
where      "where is the circle relative to the square" "left of" / "right of" / "above" / "below";
                                                        asked only when exactly one relation holds
========== ============================================ ===========================================

Yes/no questions come in pairs, one "yes" and one "no", so answers are balanced; a "no"
existence question names an absent combination, preferably of a colour and a shape that are both
in the scene on other objects (an attribute-binding confuser). Objects in relation, colour and
shape questions are named by a description that fits exactly one object.

By default no scene, caption or question contains a held-out (colour, shape) combination of
:data:`~selfcorrect.world.suites.HELDOUT_COMBOS`: such objects are recoloured.
"""

from __future__ import annotations

import hashlib
import json
import operator
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from selfcorrect.world.grammar import CAPTION_STYLES, caption
from selfcorrect.world.render import render
from selfcorrect.world.requirements import (
    CountRequirement,
    ObjectQuery,
    RelationRequirement,
    Requirements,
    evaluate,
)
from selfcorrect.world.sampling import random_scene
from selfcorrect.world.scene import (
    COLOURS,
    DEFAULT_CANVAS,
    MAX_OBJECTS,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    relative_position,
)
from selfcorrect.world.suites import is_heldout_combo

QA_KINDS: tuple[str, ...] = ("existence", "count", "colour", "shape", "relation", "where")
YES, NO = "yes", "no"
MAX_COUNT_ANSWER = 4  # counts above this are not asked: CountRequirement cannot verify them
OPPOSITE: dict[str, str] = {  # the relation that can never hold together with each one
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}

RELATION_QUESTION = "is the {a} {relation} the {b}?"
_RELATION_QUESTION = re.compile(r"is the (.+) (left of|right of|above|below) the (.+)\?", re.IGNORECASE)

# Every query a question can name: shape, optionally with colour and/or size (4 x 7 x 3).
ALL_QUERIES: tuple[ObjectQuery, ...] = tuple(
    ObjectQuery(s, c, z) for s in SHAPES for c in (None, *COLOURS) for z in (None, *SIZES)
)

# A description: (size, colour, shape), any of them None; the shape-less ones name "the ... object".
Description = tuple[str | None, str | None, str | None]


@dataclass(frozen=True)
class QA:
    """One question about a scene with its verified answer; ``kind`` is one of :data:`QA_KINDS`."""

    question: str
    answer: str
    kind: str

    def to_dict(self) -> dict[str, str]:
        return {"question": self.question, "answer": self.answer, "kind": self.kind}


class WorldDataset:
    """Seeded random scenes with their image, captions and question-answers, built on the fly.

    Args:
        size: number of items.
        seed: the data set's seed; item ``i`` depends only on ``(seed, i)``.
        canvas: image side in pixels (16..1024).
        degrade: reserved for degraded renders; needs ``transform`` until the degradation module
            supplies a default.
        transform: ``transform(scene, rng) -> PIL.Image`` used instead of the plain
            :func:`~selfcorrect.world.render.render` (e.g. a degraded render); ``rng`` is a
            ``numpy.random.Generator`` seeded from ``(seed, i)``. It must return an RGB image of
            ``canvas x canvas`` pixels.
        min_objects, max_objects: objects per scene (1..MAX_OBJECTS).
        texture: background texture amplitude 0..1 (see :class:`~selfcorrect.world.scene.Scene`).
        exclude_heldout: recolour objects whose (colour, shape) is held out, and never ask about
            held-out combinations (the default, for training data).
        caption_styles: which :data:`~selfcorrect.world.grammar.CAPTION_STYLES` to produce.

    Each item is a dict: ``index`` (int), ``image`` (PIL RGB, ``canvas x canvas``), ``scene``
    (:class:`Scene`), ``captions`` (``{style: text}``), ``qa`` (list of :class:`QA`).
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        canvas: int = DEFAULT_CANVAS,
        degrade: bool = False,
        transform: Callable[[Scene, np.random.Generator], Image.Image] | None = None,
        *,
        min_objects: int = 1,
        max_objects: int = 5,
        texture: float = 0.0,
        exclude_heldout: bool = True,
        caption_styles: Sequence[str] = CAPTION_STYLES,
    ):
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative integer, got {size!r}")
        if not isinstance(canvas, int) or not 16 <= canvas <= 1024:
            raise ValueError(f"canvas must be an integer from 16 to 1024, got {canvas!r}")
        if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got {min_objects}, {max_objects}"
            )
        if not 0.0 <= texture <= 1.0:
            raise ValueError(f"texture must be between 0 and 1, got {texture}")
        unknown = [s for s in caption_styles if s not in CAPTION_STYLES]
        if unknown:
            raise ValueError(f"unknown caption styles {unknown}; styles are {', '.join(CAPTION_STYLES)}")
        if degrade and transform is None:
            raise ValueError("degrade=True needs transform=(scene, rng) -> image, e.g. a degraded renderer")
        self.size = size
        self.seed = seed
        self.canvas = canvas
        self.degrade = degrade
        self.transform = transform
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.texture = texture
        self.exclude_heldout = exclude_heldout
        self.caption_styles = tuple(caption_styles)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        index = operator.index(index)
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a data set of {self.size}")
        scene = self.scene(index)
        if self.transform is None:
            image = render(scene, self.canvas)
        else:
            image = self.transform(scene, np.random.default_rng(_derive(self.seed, index, "image")))
            if not isinstance(image, Image.Image) or image.mode != "RGB" or image.size != (self.canvas,) * 2:
                raise ValueError(
                    f"transform must return an RGB PIL image of {self.canvas}x{self.canvas}, got {image!r}"
                )
        # One random stream per caption style and one for the questions, so that choosing other
        # styles does not change the rest of an item.
        captions = {
            style: caption(scene, style, random.Random(_derive(self.seed, index, f"caption:{style}")))
            for style in self.caption_styles
        }
        qa_rng = random.Random(_derive(self.seed, index, "qa"))
        return {
            "index": index,
            "image": image,
            "scene": scene,
            "captions": captions,
            "qa": scene_qa(scene, qa_rng, exclude_heldout=self.exclude_heldout),
        }

    def scene(self, index: int) -> Scene:
        """The scene of item ``index`` alone (no rendering)."""
        scene = random_scene(
            _derive(self.seed, index, "scene"),
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            texture=self.texture,
        )
        if not self.exclude_heldout:
            return scene
        rng = random.Random(_derive(self.seed, index, "recolour"))
        return scene.with_objects(
            replace(o, colour=rng.choice([c for c in COLOURS if not is_heldout_combo(c, o.shape)]))
            if is_heldout_combo(o.colour, o.shape)
            else o
            for o in scene.objects
        )

    def to_hf_dataset(self, n: int | None = None):
        """The first ``n`` items (default: all) as an in-memory ``datasets.Dataset``.

        Columns: ``image`` (``datasets.Image``), ``captions`` (a struct of one string per style),
        ``qa`` (a list of ``{question, answer, kind}``), ``scene`` (``Scene.to_dict()`` as JSON).
        """
        import datasets

        n = self.size if n is None else n
        if not 0 <= n <= self.size:
            raise ValueError(f"n must be between 0 and {self.size}, got {n}")
        string = datasets.Value("string")
        features = datasets.Features(
            {
                "image": datasets.Image(),
                "captions": {style: string for style in self.caption_styles},
                "qa": [{"question": string, "answer": string, "kind": string}],
                "scene": string,
            }
        )
        rows = []
        for i in range(n):
            item = self[i]
            rows.append(
                {
                    "image": item["image"],
                    "captions": item["captions"],
                    "qa": [qa.to_dict() for qa in item["qa"]],
                    "scene": json.dumps(item["scene"].to_dict()),
                }
            )
        return datasets.Dataset.from_list(rows, features=features)


def _derive(seed: int, index: int, stream: str) -> int:
    """A 64-bit seed for one random stream of one item (sha256: the same on every machine)."""
    digest = hashlib.sha256(f"{seed}:{index}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


# ---------------------------------------------------------------------------------------------
# Questions


def scene_qa(scene: Scene, rng: random.Random, exclude_heldout: bool = True) -> list[QA]:
    """Verified question-answers about ``scene`` (see the module docstring for kinds and formats).

    Args:
        scene: a scene with at least one object.
        rng: randomness for which questions are asked and how they are worded.
        exclude_heldout: never name a held-out (colour, shape) combination; the scene must not
            show one either (:class:`WorldDataset` recolours them).

    Returns:
        Existence (a yes and a no), count (two), colour-of and shape-of (when some object can be
        named without its colour / shape), relation (a yes and a no) and where (when some pair
        of objects shows exactly one relation).
    """
    objects = list(scene.objects)
    if not objects:
        raise ValueError("an empty scene has nothing to ask about")
    if exclude_heldout and any(is_heldout_combo(o.colour, o.shape) for o in objects):
        raise ValueError("the scene shows a held-out (colour, shape) combination; pass exclude_heldout=False")

    def allowed(q: ObjectQuery) -> bool:
        return not (exclude_heldout and q.colour is not None and is_heldout_combo(q.colour, q.shape))

    return [
        *_existence(objects, rng, allowed),
        *_counts(objects, rng, allowed),
        *_colour_of(objects, rng),
        *_shape_of(objects, rng),
        *_relations(objects, rng),
    ]


def _existence(objects, rng, allowed) -> list[QA]:
    present = _query_of(rng.choice(objects), rng)
    absent = [q for q in ALL_QUERIES if allowed(q) and not any(q.matches(o) for o in objects)]
    # Prefer confusers: the shape is in the scene, and so is the colour, on something else.
    confusers = [
        q
        for q in absent
        if any(o.shape == q.shape for o in objects)
        and (q.colour is None or any(o.colour == q.colour for o in objects))
    ]
    out = []
    for query in (present, rng.choice(confusers or absent)):
        found = any(query.matches(o) for o in objects)
        _verify(objects, Requirements((CountRequirement(query, 1),)), found)
        if rng.random() < 0.5:
            question = f"is there {_article(_words(_desc(query)))}?"
        else:
            question = f"are there any {_words(_desc(query), plural=True)}?"
        out.append(QA(question, YES if found else NO, "existence"))
    rng.shuffle(out)  # the yes is not always first
    return out


def _counts(objects, rng, allowed) -> list[QA]:
    # One query about something present (answer >= 1), one about anything (often 0).
    queries = [_query_of(rng.choice(objects), rng), rng.choice([q for q in ALL_QUERIES if allowed(q)])]
    out = []
    for query in dict.fromkeys(queries):  # drop a repeat, keep order
        n = sum(query.matches(o) for o in objects)
        if n > MAX_COUNT_ANSWER:
            continue
        _verify(objects, Requirements((CountRequirement(query, n, exact=True),)), True)
        question = f"how many {_words(_desc(query), plural=True)} are there?"
        out.append(QA(question, str(n), "count"))
    return out


def _colour_of(objects, rng) -> list[QA]:
    named = [(o, d) for o in objects for d in ((None, None, o.shape), (o.size, None, o.shape))]
    unique = [(o, d) for o, d in named if _unique(d, objects)]
    if not unique:
        return []
    obj, (size, _, shape) = rng.choice(unique)
    # Verified: exactly one object of this description has the answer's colour, none any other.
    checks = tuple(
        CountRequirement(ObjectQuery(shape, c, size), int(c == obj.colour), exact=True) for c in COLOURS
    )
    _verify(objects, Requirements(checks), True)
    return [QA(f"what colour is the {_words((size, None, shape))}?", obj.colour, "colour")]


def _shape_of(objects, rng) -> list[QA]:
    named = [
        (o, d)
        for o in objects
        for d in ((None, o.colour, None), (o.size, o.colour, None), (o.size, None, None))
    ]
    unique = [(o, d) for o, d in named if _unique(d, objects)]
    if not unique:
        return []
    obj, (size, colour, _) = rng.choice(unique)
    checks = tuple(
        CountRequirement(ObjectQuery(s, colour, size), int(s == obj.shape), exact=True) for s in SHAPES
    )
    _verify(objects, Requirements(checks), True)
    return [QA(f"what shape is the {_words((size, colour, None))}?", obj.shape, "shape")]


def relation_pairs(objects) -> tuple[dict[int, list[Description]], list[tuple[int, int, set[str]]]]:
    """What relation questions can ask about ``objects``.

    Returns:
        ``(names, pairs)``: for each object index, the descriptions that name it alone; and the
        ordered pairs ``(i, j, relations of i to j)`` of nameable objects that hold at least one
        relation.
    """
    names = {i: [d for d in _descriptions(o) if _unique(d, objects)] for i, o in enumerate(objects)}
    pairs = [
        (i, j, relative_position(objects[i].box, objects[j].box))
        for i in range(len(objects))
        for j in range(len(objects))
        if i != j and names[i] and names[j]
    ]
    return names, [(i, j, rels) for i, j, rels in pairs if rels]


def _relations(objects, rng) -> list[QA]:
    names, pairs = relation_pairs(objects)
    if not pairs:
        return []
    out = []
    i, j, rels = rng.choice(pairs)
    a, b = rng.choice(names[i]), rng.choice(names[j])
    holds = rng.choice(sorted(rels))
    for relation in (holds, OPPOSITE[holds]):  # a yes, and a clear no (the opposite never holds too)
        answer = relation in rels
        _verify(objects, _relation_requirements(a, relation, b), answer)
        question = RELATION_QUESTION.format(a=_words(a), relation=relation, b=_words(b))
        out.append(QA(question, YES if answer else NO, "relation"))
    rng.shuffle(out)
    single = [(i, j, rels) for i, j, rels in pairs if len(rels) == 1]
    if single:
        i, j, rels = rng.choice(single)
        a, b = rng.choice(names[i]), rng.choice(names[j])
        (relation,) = rels
        for r in RELATIONS:
            _verify(objects, _relation_requirements(a, r, b), r == relation)
        out.append(QA(f"where is the {_words(a)} relative to the {_words(b)}?", relation, "where"))
    return out


def relation_parts(question: str) -> tuple[str, str, str]:
    """``"is the red circle left of the blue square?"`` -> ``("red circle", "left of", "blue square")``.

    Raises:
        ValueError: ``question`` is not a relation question of :func:`scene_qa`.
    """
    match = _RELATION_QUESTION.fullmatch(question.strip())
    if match is None:
        raise ValueError(f"not a relation question: {question!r}")
    a, relation, b = match.groups()
    return a, relation.lower(), b


def _relation_requirements(a: Description, relation: str, b: Description) -> Requirements:
    return Requirements(
        (CountRequirement(_query(a)), CountRequirement(_query(b))), (RelationRequirement(0, relation, 1),)
    )


def _verify(objects, requirements: Requirements, expected: bool) -> None:
    # The answer was derived from the scene by hand; evaluate() must agree, or the generator is wrong.
    if all(r.passed for r in evaluate(objects, requirements)) != expected:
        raise RuntimeError(f"QA answer disagrees with evaluate() for {requirements.describe()}")


def _descriptions(obj) -> list[Description]:
    """The four ways to name ``obj`` with its shape: bare, with colour, with size, with both."""
    return [
        (None, None, obj.shape),
        (None, obj.colour, obj.shape),
        (obj.size, None, obj.shape),
        (obj.size, obj.colour, obj.shape),
    ]


def _query_of(obj, rng) -> ObjectQuery:
    """A random description of ``obj`` (with its shape) as a query."""
    return _query(rng.choice(_descriptions(obj)))


def _query(d: Description) -> ObjectQuery:
    size, colour, shape = d
    return ObjectQuery(shape, colour, size)


def _desc(q: ObjectQuery) -> Description:
    return (q.size, q.colour, q.shape)


def _unique(d: Description, objects) -> bool:
    size, colour, shape = d
    fits = [
        o
        for o in objects
        if (size is None or o.size == size)
        and (colour is None or o.colour == colour)
        and (shape is None or o.shape == shape)
    ]
    return len(fits) == 1


def _words(d: Description, plural: bool = False) -> str:
    """``"small red circle"``; ``"red object"`` without a shape; plural ``"crosses"``."""
    size, colour, shape = d
    noun = shape or "object"
    if plural:
        noun += "es" if noun.endswith("s") else "s"
    return " ".join(w for w in (size, colour, noun) if w)


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words
