"""Fixed, seeded prompt suites: train / val / test per category, plus a held-out split.

Every category of :data:`~selfcorrect.world.requirements.CATEGORIES` gets GenEval-like prompts
(half of them start with GenEval's "a photo of"; the rest vary the prefix, size synonyms, digits,
joiners and relation wording), built from the grammar's own requirements so that each one parses
back to them and :func:`~selfcorrect.world.sampling.sample_scene` can satisfy it:

============== ===========================================================================
single_object  a shape, maybe with a size: "a photo of a small circle"
colors         a coloured shape, maybe with a size: "a photo of a blue square"
counting       1..4 of one shape, maybe with colour and size: "a photo of three red triangles"
two_objects    two different shapes, maybe with sizes: "a photo of a circle and a square"
position       two different shapes, one relation: "a photo of a circle left of a square"
color_attr.    two shapes of two colours: "a photo of a red circle and a blue square"
negation       one present object and one absent kind: "a blue square and no circles"
============== ===========================================================================

How splits are made. A *meaning* is a set of requirements up to order and mirroring ("a circle
left of a square" = "a square right of a circle"). Where a category has enough meanings
(counting, position, color_attribution, negation), test, val and train hold different meanings,
one wording each in test and val, every variant in train. Where it has too few (single_object:
12 meanings; colors: 60; two_objects: 54), prompts are disjoint only by text: every meaning is
worded several ways and the wordings are dealt out in rounds, so each split covers every meaning.
Either way no prompt text is in two splits.

Held-out combinations (CLEVR CoGenT-style): the (colour, shape) pairs of :data:`HELDOUT_COMBOS`
never appear in train, val or test, and the ``heldout`` split holds the prompts (of the
categories that name colours) that use at least one. Training-data builders exclude them from
scenes and captions with :func:`is_heldout_combo`.

Determinism: one ``random.Random`` per category, seeded from :data:`SUITE_SEED`, over sorted
enumerations; no ``hash()`` or set order, so every machine and Python version builds the same
suites.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from selfcorrect.errors import SelfcorrectError
from selfcorrect.world.grammar import parse_prompt, varied_prompt
from selfcorrect.world.requirements import (
    CATEGORIES,
    CountRequirement,
    ObjectQuery,
    RelationRequirement,
    Requirements,
)
from selfcorrect.world.scene import COLOURS, SHAPES

SUITE_SEED = 20240611  # seeds every suite; changing it changes every prompt (and the tests' hash)
SPLITS: tuple[str, ...] = ("train", "val", "test", "heldout")
TEST_SIZE = 100  # prompts per category in "test"
VAL_SIZE = 50  # prompts per category in "val"
MIN_TRAIN = 100  # train prompts a category needs before its splits are made disjoint in meaning
MAX_TRAIN = 500  # cap on train prompts per category (keeps loading and the suite tests fast)
HELDOUT_SIZE = 100  # cap on prompts per category in "heldout"
MAX_ROUNDS = 200  # rounds of fresh wordings over a category's meanings when one wording is not enough

# (colour, shape) pairs kept out of train / val / test prompts and training scenes: one per
# shape, each a different colour, so every shape and every colour stays seen in other pairs.
HELDOUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("green", "circle"),
    ("yellow", "square"),
    ("purple", "triangle"),
    ("red", "cross"),
)

_SIZES_OR_NONE = (None, "small", "large")
_COLOURS_OR_NONE = (None, *COLOURS)


class SuiteError(SelfcorrectError, ValueError):
    """An unknown split or category."""


@dataclass(frozen=True)
class SuitePrompt:
    """One prompt of a suite.

    Attributes:
        prompt: the text, e.g. ``"a photo of two red circles"``.
        category: one of :data:`~selfcorrect.world.requirements.CATEGORIES`.
        split: one of :data:`SPLITS`.
        requirements: ``parse_prompt(prompt)``.
    """

    prompt: str
    category: str
    split: str
    requirements: Requirements


def is_heldout_combo(colour: str, shape: str) -> bool:
    """True if ``(colour, shape)`` is held out of training (see :data:`HELDOUT_COMBOS`).

    Raises:
        ValueError: an unknown colour or shape (e.g. the arguments swapped).
    """
    if colour not in COLOURS or shape not in SHAPES:
        raise ValueError(f"is_heldout_combo(colour, shape) got ({colour!r}, {shape!r})")
    return (colour, shape) in HELDOUT_COMBOS


def mentions_heldout(requirements: Requirements) -> bool:
    """True if any object group of ``requirements`` (absent ones included) names a held-out combo."""
    return any(
        r.query.colour is not None and is_heldout_combo(r.query.colour, r.query.shape)
        for r in requirements.objects
    )


def load_suite(split: str, category: str | None = None) -> list[SuitePrompt]:
    """The prompts of one split, for one category or all (in :data:`CATEGORIES` order).

    The ``heldout`` split has prompts only for the categories that name colours (colors,
    counting, color_attribution, negation); for the others it is empty.

    Raises:
        SuiteError: an unknown split or category.
    """
    if split not in SPLITS:
        raise SuiteError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    if category is not None and category not in CATEGORIES:
        raise SuiteError(f"unknown category {category!r}; categories are {', '.join(CATEGORIES)}")
    suites = _all_suites()
    return [p for c in ((category,) if category else CATEGORIES) for p in suites[split, c]]


def suite_counts() -> dict[str, dict[str, int]]:
    """``{split: {category: number of prompts}}``."""
    suites = _all_suites()
    return {split: {c: len(suites[split, c]) for c in CATEGORIES} for split in SPLITS}


def suite_table() -> str:
    """The split x category sizes as a Markdown table (what ``selfcorrect world suite --table`` prints)."""
    counts = suite_counts()
    lines = [
        "| category | " + " | ".join(SPLITS) + " |",
        "|---|" + "---:|" * len(SPLITS),
    ]
    for c in CATEGORIES:
        lines.append(f"| {c} | " + " | ".join(str(counts[s][c]) for s in SPLITS) + " |")
    lines.append("| total | " + " | ".join(str(sum(counts[s].values())) for s in SPLITS) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Building


@functools.lru_cache(maxsize=1)
def _all_suites() -> dict[tuple[str, str], tuple[SuitePrompt, ...]]:
    suites = {}
    for k, category in enumerate(CATEGORIES):
        rng = random.Random(SUITE_SEED + k)
        units = _meanings(category)
        heldout = [u for u in units if mentions_heldout(u[0])]
        main = [u for u in units if not mentions_heldout(u[0])]
        rng.shuffle(main)
        rest = main[TEST_SIZE + VAL_SIZE :]
        if len(main) >= TEST_SIZE + VAL_SIZE and sum(len(u) for u in rest) >= MIN_TRAIN:
            # Enough meanings: the splits differ in what they ask, not only in wording.
            test = _word(main[:TEST_SIZE], TEST_SIZE, rng, rounds=1)
            val = _word(main[TEST_SIZE : TEST_SIZE + VAL_SIZE], VAL_SIZE, rng, rounds=1)
            train = _word(rest, MAX_TRAIN, rng, rounds=1, every_variant=True)
        else:
            # Few meanings: deal fresh wordings of every meaning in rounds, then cut.
            pool = _word(main, TEST_SIZE + VAL_SIZE + MAX_TRAIN, rng, rounds=MAX_ROUNDS)
            test, val = pool[:TEST_SIZE], pool[TEST_SIZE : TEST_SIZE + VAL_SIZE]
            train = pool[TEST_SIZE + VAL_SIZE :]
        worded = {
            "train": train,
            "val": val,
            "test": test,
            "heldout": _word(heldout, HELDOUT_SIZE, rng, rounds=MAX_ROUNDS),
        }
        for split, prompts in worded.items():
            suites[split, category] = tuple(_suite_prompt(t, r, category, split) for t, r in prompts)
    return suites


def _word(
    units: list[list[Requirements]], n: int, rng: random.Random, rounds: int, every_variant: bool = False
) -> list[tuple[str, Requirements]]:
    """Up to ``n`` distinct (prompt, requirements), going over ``units`` in rounds.

    Each round words one random variant of every unit (every variant if ``every_variant``) with a
    fresh random wording; a wording already drawn is skipped. Stops at ``n`` prompts or after
    ``rounds`` rounds.
    """
    out: dict[str, Requirements] = {}
    for _ in range(rounds):
        for unit in units:
            for req in unit if every_variant else [rng.choice(unit)]:
                out.setdefault(varied_prompt(req, rng), req)
                if len(out) == n:
                    return list(out.items())
    return list(out.items())


def _suite_prompt(text: str, req: Requirements, category: str, split: str) -> SuitePrompt:
    parsed = parse_prompt(text)
    if parsed != req or parsed.category != category:  # a grammar bug, never bad input
        raise RuntimeError(f"suite prompt {text!r} parses to {parsed}, expected {req} ({category})")
    return SuitePrompt(text, category, split, parsed)


def _meanings(category: str) -> list[list[Requirements]]:
    """Every meaning of ``category``: lists of the Requirements that say the same thing in
    different orders (e.g. "A left of B" and "B right of A"), in a fixed enumeration order."""

    def some(shape, colour=None, size=None) -> CountRequirement:
        return CountRequirement(ObjectQuery(shape, colour, size), 1, exact=False)

    def req(*objects, relations=()) -> Requirements:
        return Requirements(tuple(objects), tuple(relations))

    pairs = [(a, b) for i, a in enumerate(SHAPES) for b in SHAPES[i + 1 :]]
    if category == "single_object":
        return [[req(some(s, size=z))] for s in SHAPES for z in _SIZES_OR_NONE]
    if category == "colors":
        return [[req(some(s, c, z))] for s in SHAPES for c in COLOURS for z in _SIZES_OR_NONE]
    if category == "counting":
        return [
            [req(CountRequirement(ObjectQuery(s, c, z), n, exact=True))]
            for s in SHAPES
            for n in range(1, 5)
            for c in _COLOURS_OR_NONE
            for z in _SIZES_OR_NONE
        ]
    if category == "two_objects":
        return [
            [req(some(a, size=za), some(b, size=zb)), req(some(b, size=zb), some(a, size=za))]
            for a, b in pairs
            for za in _SIZES_OR_NONE
            for zb in _SIZES_OR_NONE
        ]
    if category == "position":
        mirror = {"left of": "right of", "above": "below"}
        return [
            [
                req(some(a, size=za), some(b, size=zb), relations=[RelationRequirement(0, rel, 1)]),
                req(some(b, size=zb), some(a, size=za), relations=[RelationRequirement(0, mirror[rel], 1)]),
            ]
            for a in SHAPES
            for b in SHAPES
            if a != b
            for rel in mirror
            for za in _SIZES_OR_NONE
            for zb in _SIZES_OR_NONE
        ]
    if category == "color_attribution":
        return [
            [req(some(a, ca, za), some(b, cb, zb)), req(some(b, cb, zb), some(a, ca, za))]
            for a, b in pairs
            for ca in COLOURS
            for cb in COLOURS
            if ca != cb
            for za in _SIZES_OR_NONE
            for zb in _SIZES_OR_NONE
        ]
    if category == "negation":
        # The absent kind is another shape, or the same shape in another colour ("a red circle
        # and no blue circles"), so that the present object never rules itself out.
        return [
            [req(some(p, pc, pz), CountRequirement(ObjectQuery(q, qc), 0, exact=True))]
            for p in SHAPES
            for pc in _COLOURS_OR_NONE
            for pz in _SIZES_OR_NONE
            for q in SHAPES
            for qc in _COLOURS_OR_NONE
            if q != p or (pc is not None and qc is not None and qc != pc)
        ]
    raise SuiteError(f"unknown category {category!r}")
