"""Hard negative captions: one small edit that makes a true caption false for its scene.

CLIP-style models trained only against the other captions of a batch learn a bag of words: a
random caption of another scene almost never differs from the true one in just which object is
red, how many circles there are, or which side the square is on, so nothing teaches those
(Yuksekgonul et al., 2023, "When and why vision-language models behave like bags-of-words",
whose NegCLIP adds such negatives to the batch). :func:`hard_negatives` makes them for the world,
in the caption's own wording, and keeps only those that are false for the scene.

Each negative is one edit of the caption's words, of one of three kinds
(:data:`NEGATIVE_KINDS`):

========= ============ ============================================================================
kind      edit         example (true: "a photo of two red circles left of a blue square")
========= ============ ============================================================================
attribute colour       "... two green circles left of a blue square"
attribute add colour   "a photo of a circle" -> "a photo of a red circle"
attribute shape        "... two red triangles left of a blue square"
attribute size         "a small circle" -> "a large circle"; "a circle" -> "a small circle"
attribute swap colour  "... two blue circles left of a red square" (also swap size, swap shape)
count     count        "... three red circles left of a blue square"; "a circle" -> "no circles"
relation  relation     "... two red circles above a blue square"
relation  swap         "a photo of a blue square left of two red circles"
========= ============ ============================================================================

A swap exchanges one attribute (or the two sides of a relation) between two objects: the words
stay the same and only their binding changes, which is exactly what a bag of words cannot see.
Articles and "there is / are" are made to agree after an edit, so a negative is never given away
by its grammar.

Every negative is checked with the scene spec: it must parse (:func:`parse_prompt`) and its
:class:`Requirements` must fail :func:`evaluate` on the scene's objects. The oracle is not used.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from selfcorrect.errors import PromptError
from selfcorrect.world.grammar import (
    NOUNS,
    NUMBER_WORDS,
    RELATION_PHRASES,
    SIZE_WORDS,
    canonical_prompt,
    caption,
    parse_prompt,
)
from selfcorrect.world.requirements import Requirements, evaluate
from selfcorrect.world.scene import COLOURS, RELATIONS, SHAPES, SIZES, Scene
from selfcorrect.world.suites import mentions_heldout

NEGATIVE_KINDS: tuple[str, ...] = ("attribute", "count", "relation")
# Edits that only add a word: both can hold at once (of a red circle, "a circle" and "a red circle").
SPECIALISING_EDITS: tuple[str, ...] = ("add colour", "add size")

# The other size, in the same register ("little" -> "big", not "large").
OTHER_SIZE_WORD: dict[str, str] = {
    "small": "large",
    "little": "big",
    "tiny": "big",
    "large": "small",
    "big": "little",
}
_TOKEN = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")
_DIGITS = {str(n): n for n in NUMBER_WORDS.values()}


@dataclass(frozen=True)
class HardNegative:
    """A caption that is false for the scene and one edit away from a true caption.

    Attributes:
        text: the negative caption, e.g. ``"a photo of two blue circles"``.
        kind: one of :data:`NEGATIVE_KINDS`.
        edit: what was changed, e.g. ``"circle colour red -> blue"``, ``"circle count two ->
            three"``, ``"relation left of -> above"``, ``"swap colour circles / square"``.
        family: the kind of edit, e.g. ``"colour"``, ``"add colour"``, ``"swap shape"``.
    """

    text: str
    kind: str
    edit: str
    family: str = ""


def hard_negatives(
    scene: Scene,
    text: str | Requirements | None = None,
    *,
    n: int = 10,
    rng: random.Random | None = None,
    exclude_heldout: bool = True,
) -> list[HardNegative]:
    """Up to ``n`` distinct captions, each one edit away from ``text`` and false for ``scene``.

    Kinds take turns (attribute, count, relation, from a random first kind), and so do the edits
    within a kind (colour, shape, size, swaps, ...), so that ``n`` negatives mix them evenly;
    which candidates of an edit come first is drawn from ``rng``. A caption with no relation has
    no relation negatives; a caption that allows fewer than ``n`` negatives gets fewer.

    Args:
        scene: the scene ``text`` is true of.
        text: a caption of the world grammar, or :class:`Requirements` (worded with
            :func:`canonical_prompt`); default the scene's ``positional`` caption, which names a
            relation when one clearly holds.
        n: how many negatives at most.
        rng: randomness for the order of candidates; default ``random.Random(scene.seed)``. The
            same scene, text and rng state give the same negatives.
        exclude_heldout: drop negatives that name a held-out (colour, shape) combination
            (:data:`~selfcorrect.world.suites.HELDOUT_COMBOS`), as training data must, unless
            ``text`` names one itself.

    Returns:
        :class:`HardNegative` list, at most ``n`` long, no text twice, none equal to ``text``.

    Raises:
        PromptError: ``text`` is not a prompt of the world grammar.
        ValueError: ``text`` is not true of ``scene``, or ``n`` is negative.
    """
    if n < 0:
        raise ValueError(f"n must be at least 0, got {n}")
    if text is None:
        text = caption(scene, "positional", random.Random(scene.seed))
    elif isinstance(text, Requirements):
        text = canonical_prompt(text)
    if not all(r.passed for r in evaluate(scene.objects, parse_prompt(text))):
        raise ValueError(f"{text!r} is not true of the scene, so it has no hard negatives")
    out: list[HardNegative] = []
    if n == 0:
        return out
    rng = rng if rng is not None else random.Random(scene.seed)
    for negative, requirements in _edits(text, rng, exclude_heldout):
        if all(r.passed for r in evaluate(scene.objects, requirements)):
            continue  # still true: not a negative (e.g. "a circle" -> "a red circle" on a red one)
        out.append(negative)
        if len(out) == n:
            break
    return out


def one_edit_variants(
    text: str,
    *,
    n: int | None = None,
    rng: random.Random | None = None,
    specialising: bool = False,
    exclude_heldout: bool = True,
) -> list[HardNegative]:
    """Captions one edit away from ``text``, with no scene to check them against.

    The edits of :func:`hard_negatives`, for a critic that has only the prompt: a CLIP that
    prefers "a photo of two blue circles" to the prompt "a photo of two red circles" on an image
    says the circles look blue (:class:`~selfcorrect.critics.clip.ClipCritic`).

    Args:
        text: a prompt of the world grammar.
        n: how many at most (default all), kinds taking turns as in :func:`hard_negatives`.
        rng: the order of candidates within an edit family (default ``random.Random(0)``).
        specialising: keep the edits that only add a word (:data:`SPECIALISING_EDITS`, "a
            circle" -> "a red circle"): they can be true wherever ``text`` is, so they are left
            out by default.
        exclude_heldout: as in :func:`hard_negatives`.

    Raises:
        PromptError: ``text`` is not a prompt of the world grammar.
    """
    out = []
    for negative, _ in _edits(text, rng if rng is not None else random.Random(0), exclude_heldout):
        if specialising or negative.family not in SPECIALISING_EDITS:
            out.append(negative)
            if len(out) == n:
                break
    return out


def edited_requirements(original: Requirements, edited: Requirements) -> tuple[int, ...]:
    """Which requirements of ``original`` an edit changed, as indexes into
    :meth:`Requirements.describe` (object groups first, then relations).

    A swap of a relation's two sides leaves the object groups as they were, only in another
    order: that is the relations' change. An edit that only reorders object groups, with no
    relation to blame, says the same as ``original`` and changes nothing: ``()``.
    """
    n = len(original.objects)
    changed = [i for i, (a, b) in enumerate(zip(original.objects, edited.objects)) if a != b]
    moved = sorted(map(repr, edited.objects)) == sorted(map(repr, original.objects))
    if changed and len(edited.objects) == n and moved:
        return tuple(n + i for i in range(len(original.relations)))  # the same objects, reordered
    changed += [n + i for i, (a, b) in enumerate(zip(original.relations, edited.relations)) if a != b]
    return tuple(changed)


def _edits(
    text: str, rng: random.Random, exclude_heldout: bool
) -> Iterator[tuple[HardNegative, Requirements]]:
    """Every distinct single edit of ``text`` that parses, with its requirements, kinds taking turns."""
    heldout_ok = mentions_heldout(parse_prompt(text))  # a caption that names one may have edits that do
    tokens = _TOKEN.findall(text)
    capital = tokens[0][:1].isupper()
    words = [t.lower() for t in tokens]
    seen = {_detokenize(words, capital)}
    for edited, kind, edit, family in _interleave(_candidates(words), rng):
        candidate = _detokenize(_agree(edited), capital)
        if candidate in seen:
            continue
        seen.add(candidate)
        try:
            requirements = parse_prompt(candidate)
        except PromptError:  # e.g. "the square" no longer names an earlier object
            continue
        if exclude_heldout and mentions_heldout(requirements) and not heldout_ok:
            continue
        yield HardNegative(candidate, kind, edit, family), requirements


# ---------------------------------------------------------------------------------------------
# Reading a caption's words


@dataclass(frozen=True)
class _Phrase:
    """One object phrase of a caption, as token indexes.

    ``det`` is the determiner as words: ``("a",)``, ``("two",)``, ``("at", "least", "2")``,
    ``("no",)``, ``("the",)``; ``()`` after a bare "without". Modifiers run from ``start +
    len(det)`` to ``noun``.
    """

    start: int
    noun: int
    det: tuple[str, ...]
    colour: int | None
    size: int | None
    without: bool

    @property
    def end(self) -> int:
        return self.noun + 1

    @property
    def editable(self) -> bool:
        # "the square" refers back to an earlier object: editing it only breaks the reference.
        return self.det != ("the",)


def _phrases(words: list[str]) -> list[_Phrase]:
    """Every object phrase, in order (see the grammar in :mod:`selfcorrect.world.grammar`)."""
    out = []
    for noun, word in enumerate(words):
        if word not in NOUNS:
            continue
        j = noun - 1
        colour = size = None
        while j >= 0 and (words[j] in COLOURS or words[j] in SIZE_WORDS):
            if words[j] in COLOURS:
                colour = j if colour is None else colour
            else:
                size = j if size is None else size
            j -= 1
        if j < 0:
            continue
        det: tuple[str, ...]
        start, without = j, False
        if words[j] == "without":
            det, start, without = (), j + 1, True
        elif words[j] in ("a", "an", "any", "no", "the"):
            det = (words[j],)
            without = words[j] in ("a", "an", "any") and j > 0 and words[j - 1] == "without"
        elif _value(words[j]) is not None:
            if j >= 2 and words[j - 2 : j] == ["at", "least"]:
                det, start = ("at", "least", words[j]), j - 2
            elif j >= 1 and words[j - 1] == "exactly":
                det, start = ("exactly", words[j]), j - 1
            else:
                det = (words[j],)
        else:
            continue
        out.append(_Phrase(start, noun, det, colour, size, without))
    return out


def _relations(words: list[str]) -> list[tuple[int, int, str]]:
    """``(start, end, relation)`` of every relation phrase, longest wording first."""
    out = []
    i = 0
    phrases = sorted(RELATION_PHRASES, key=len, reverse=True)
    while i < len(words):
        match = next((p for p in phrases if tuple(words[i : i + len(p)]) == p), None)
        if match is None:
            i += 1
            continue
        out.append((i, i + len(match), RELATION_PHRASES[match]))
        i += len(match)
    return out


def _value(word: str) -> int | None:
    return NUMBER_WORDS.get(word, _DIGITS.get(word))


def _noun(shape: str, plural: bool) -> str:
    return shape + ("es" if shape.endswith("s") else "s") if plural else shape


# ---------------------------------------------------------------------------------------------
# Edits. Each candidate is (words, kind, edit, family); they are made lazily and checked in order.

_Candidate = tuple[list[str], str, str, str]  # edited words, kind, edit, family


def _candidates(words: list[str]) -> dict[tuple[str, str], list[_Candidate]]:
    """Every single edit of ``words``, grouped by ``(kind, edit family)``."""
    phrases = [p for p in _phrases(words) if p.editable]
    groups: dict[tuple[str, str], list[_Candidate]] = {}

    def add(kind: str, family: str, edited: list[str], edit: str) -> None:
        groups.setdefault((kind, family), []).append((edited, kind, edit, family))

    for p in phrases:
        shape = NOUNS[words[p.noun]]
        plural = words[p.noun] != shape
        # Attributes of one object.
        if p.colour is not None:
            for colour in COLOURS:
                if colour != words[p.colour]:
                    edit = f"{shape} colour {words[p.colour]} -> {colour}"
                    add("attribute", "colour", _put(words, p.colour, colour), edit)
        else:
            for colour in COLOURS:
                add("attribute", "add colour", _insert(words, p.noun, colour), f"{shape} add colour {colour}")
        for other in SHAPES:
            if other != shape:
                add(
                    "attribute",
                    "shape",
                    _put(words, p.noun, _noun(other, plural)),
                    f"shape {shape} -> {other}",
                )
        if p.size is not None:
            size = OTHER_SIZE_WORD[words[p.size]]
            add("attribute", "size", _put(words, p.size, size), f"{shape} size {words[p.size]} -> {size}")
        else:
            modifiers = p.start + len(p.det)
            for size in SIZES:
                add("attribute", "add size", _insert(words, modifiers, size), f"{shape} add size {size}")
        # Its count ("without circles" has none to change).
        for det, plural_now, edit in () if p.without else _recounts(p.det):
            edited = words[: p.start] + list(det) + words[p.start + len(p.det) : p.noun]
            edited += [_noun(shape, plural_now)] + words[p.end :]
            add("count", "count", edited, f"{shape} {edit}")

    # Attribute swaps between two objects: the same words, bound the other way round.
    for i, p in enumerate(phrases):
        for q in phrases[i + 1 :]:
            for family, a, b in (("swap colour", p.colour, q.colour), ("swap size", p.size, q.size)):
                if a is not None and b is not None and words[a] != words[b]:
                    edited = _put(_put(words, a, words[b]), b, words[a])
                    add("attribute", family, edited, f"{family} {words[p.noun]} / {words[q.noun]}")
            sp, sq = NOUNS[words[p.noun]], NOUNS[words[q.noun]]
            if sp != sq:
                edited = _put(words, p.noun, _noun(sq, words[p.noun] != sp))
                edited = _put(edited, q.noun, _noun(sp, words[q.noun] != sq))
                add("attribute", "swap shape", edited, f"swap shape {sp} / {sq}")

    # Relations: another relation in its place, or its two sides swapped.
    by_end = {p.end: p for p in phrases}
    by_start = {p.start: p for p in phrases}
    for start, end, relation in _relations(words):
        for other in RELATIONS:
            if other != relation:
                new = _relation_words(words[start:end], other)
                add(
                    "relation",
                    "relation",
                    words[:start] + new + words[end:],
                    f"relation {relation} -> {other}",
                )
        copula = start > 0 and words[start - 1] in ("is", "are")
        subject = by_end.get(start - 1 if copula else start)
        reference = by_start.get(end)
        if subject is not None and reference is not None:
            edited = (
                words[: subject.start]
                + words[reference.start : reference.end]
                + words[subject.end : reference.start]
                + words[subject.start : subject.end]
                + words[reference.end :]
            )
            add("relation", "swap", edited, f"swap sides of {relation}")
    return groups


def _recounts(det: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], bool, str]]:
    """Other counts for a determiner: ``(new determiner, plural noun, edit)``, same style
    (digits stay digits, "at least" stays "at least")."""
    old = " ".join(det)
    digits = bool(det) and det[-1] in _DIGITS

    def number(v: int) -> str:
        return str(v) if digits else tuple(NUMBER_WORDS)[v]

    if det in (("a",), ("an",), ("any",)):  # at least one
        options = [(("no",), 0), (("two",), 2), (("three",), 3)]
    elif det == ("no",):
        options = [(("a",), 1), (("two",), 2), (("three",), 3)]
    elif det[:2] == ("at", "least"):
        options = [(("at", "least", number(v)), v) for v in range(1, 5) if v != _value(det[-1])]
    elif det and _value(det[-1]) is not None:  # an exact count, "exactly" or not
        prefix, current = det[:-1], _value(det[-1])
        options = []
        for v in range(5):
            if v != current:
                word = "no" if v == 0 and not prefix and not digits and det[-1] != "zero" else number(v)
                options.append(((*prefix, word), v))
    else:
        return
    for new, value in options:
        yield new, value != 1, f"count {old} -> {' '.join(new)}"


def _relation_words(old: list[str], relation: str) -> list[str]:
    # Keep "to the" / "on the" for left and right ("to the left of" -> "to the right of").
    if relation in ("left of", "right of") and old[:2] in (["to", "the"], ["on", "the"]):
        return old[:2] + relation.split()
    return relation.split()


def _put(words: list[str], i: int, word: str) -> list[str]:
    out = list(words)
    out[i] = word
    return out


def _insert(words: list[str], i: int, word: str) -> list[str]:
    return words[:i] + [word] + words[i:]


def _interleave(groups: dict[tuple[str, str], list[_Candidate]], rng: random.Random) -> Iterator[_Candidate]:
    """Candidates with kinds taking turns, and edit families taking turns within a kind."""
    per_kind: dict[str, list[Iterator[_Candidate]]] = {}
    for (kind, _), items in sorted(groups.items()):
        items = list(items)
        rng.shuffle(items)
        per_kind.setdefault(kind, []).append(iter(items))
    kinds = [k for k in NEGATIVE_KINDS if k in per_kind]
    if not kinds:
        return
    first = rng.randrange(len(kinds))
    queues = {k: _round_robin(per_kind[k], rng) for k in kinds[first:] + kinds[:first]}
    while queues:
        for kind in list(queues):
            item = next(queues[kind], None)
            if item is None:
                del queues[kind]
            else:
                yield item


def _round_robin(iterators: list[Iterator[_Candidate]], rng: random.Random) -> Iterator[_Candidate]:
    live = list(iterators)
    rng.shuffle(live)
    while live:
        for it in list(live):
            item = next(it, None)
            if item is None:
                live.remove(it)
            else:
                yield item


# ---------------------------------------------------------------------------------------------
# Writing it back


def _agree(words: list[str]) -> list[str]:
    """Fix articles ("a orange" -> "an orange"), "there is/are" and "is/are" after an edit."""
    out = list(words)
    for i in range(len(out) - 1):
        if out[i] in ("a", "an"):
            out[i] = "an" if out[i + 1][0] in "aeiou" else "a"
    phrases = _phrases(out)
    if out[:1] == ["there"] and len(out) > 1 and out[1] in ("is", "are") and phrases:
        out[1] = "are" if out[phrases[0].noun] not in SHAPES else "is"
    for p in phrases:
        if p.end < len(out) and out[p.end] in ("is", "are"):
            out[p.end] = "are" if out[p.noun] not in SHAPES else "is"
    return out


def _detokenize(words: list[str], capital: bool) -> str:
    text = ""
    for w in words:
        text += w if w in ",." else (" " if text else "") + w
    return text[:1].upper() + text[1:] if capital else text
