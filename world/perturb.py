"""TLDR's synthetic hard negatives for the world: true responses, minimal wrong edits, wrong words.

TLDR (Fu et al., "TLDR: Token-Level Detective Reward Model for Large Vision Language Models",
ICLR 2025; notes/anchor-critics.md, section c) trains a per-token reward model on correct
captions and answers and on *perturbed* copies of them: a text-only LLM makes one minimal edit of
a given type, a checker rejects paraphrases, and the token labels come from diffing the perturbed
text against the original. Here the world's scene spec plays both the LLM and the checker: every
edit is made on the grammar's words and kept only if it is false for the scene
(:func:`~selfcorrect.world.requirements.evaluate` on the scene's objects, never the oracle).

Perturbation types (:data:`PERTURBATION_TYPES`), the seven of TLDR's eight that exist in a world
without text:

================ ========================================================== ==================
type             caption edit (true: "a small red circle left of a large    answer edit
                 blue square")                                               (VQA)
================ ========================================================== ==================
spatial          "... circle above a ..."; sides swapped: "a large blue      relation yes/no,
                 square left of a small red circle"                          "where" answers
attribute        colour or size of one object: "a small green circle ...";   colour answers
                 a colour / size added
binding          two objects exchange a colour, size or shape: "a small      --
                 blue circle left of a large red square"
object           one object's shape: "a small red triangle left of ..."     shape answers
counting         a count between numbers: "two small red circles ..."       count answers
small_object     an attribute, shape or count edit of a phrase that names    --
                 only small objects (TLDR's "small or background object")
counterfactual   an absent object mentioned ("..., a green cross and ..."),  existence yes/no
                 or existence flipped ("a circle" <-> "no circles")
================ ========================================================== ==================

Edits of captions come from :func:`~selfcorrect.world.negatives.hard_negatives` (every single
edit of the caption's words, checked false for the scene), typed from their edit description,
plus absent-object insertions made here.

**A negative must not be given away by its words.** TLDR's checker rejects edits that are not
minimal; here the danger is the opposite one: the world's captions follow fixed rules (groups in
canonical order, "no ..." groups last, the attributes a style names), and a model trained on
negatives that break them learns to spot the broken form instead of looking at the image, and
then never flags the well-formed mistakes of a real VLM. So edits that break their caption's
style are dropped (:func:`in_style`), absent objects are inserted where the style names them,
and half of the scenes have groups of identical objects (:func:`grouped_scene`), so that "three
large blue crosses" is as common in true captions as in count edits. The training script's blind
control (the same data with a blank image) measures what is left to find from the text alone. **Labels are words**: :attr:`Perturbation.spans` are
the character spans of the perturbed text's words that the word-level diff against the original
marks as replaced or inserted (TLDR's rule), so an article that had to agree with a new colour
("a red" -> "an orange") is labelled too. Two refinements: when the two sides of a relation are
swapped, the text before and after the relation are diffed separately (each slot against what was
there: "a small red circle left of a large blue square" -> "a large blue square left of a small
red circle" labels "large blue square" and "small red circle", never the relation); for an
inserted absent object only the inserted phrase is labelled, not the comma or "and" that joins
it. Token labels follow from the spans through the
tokenizer's offsets (:func:`selfcorrect.train.tldr.token_labels`).

:class:`PerturbationSet` is a seeded, map-style data set: item ``i`` is a pure function of
``(split, seed, i)`` and holds one image (a render, or a degraded render with its ground truth)
with one true response and one perturbed response to the same prompt. Splits use the world's
:data:`~selfcorrect.world.conversations.SPLIT_SEEDS`. No response names a held-out (colour,
shape) combination.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from difflib import SequenceMatcher

from PIL import Image

from selfcorrect.critics import prompts as P
from selfcorrect.errors import PromptError
from selfcorrect.world.conversations import (
    SPLIT_SEEDS,
    _as_object,
    _recoloured,
    _usable,
    answer_text,
    vqa_prompt,
)
from selfcorrect.world.data import _derive, scene_qa
from selfcorrect.world.degrade import degrade
from selfcorrect.world.grammar import (
    CAPTION_STYLES,
    GENEVAL_PREFIX,
    NOUNS,
    RELATION_PHRASES,
    SIZE_WORDS,
    canonical_prompt,
    caption,
    parse_prompt,
)
from selfcorrect.world.negatives import HardNegative, hard_negatives
from selfcorrect.world.render import render
from selfcorrect.world.requirements import CountRequirement, ObjectQuery, Requirements, evaluate
from selfcorrect.world.sampling import UnsatisfiableError, random_scene, sample_scene
from selfcorrect.world.scene import COLOURS, DEFAULT_CANVAS, RELATIONS, SHAPES, SIZES, Scene
from selfcorrect.world.suites import is_heldout_combo

PERTURBATION_TYPES: tuple[str, ...] = (
    "spatial",
    "attribute",
    "binding",
    "object",
    "counting",
    "small_object",
    "counterfactual",
)
NONE = "none"  # the kind of an unperturbed (true) response
# The answer edits of VQA, by question kind (selfcorrect.world.data.QA_KINDS).
ANSWER_TYPES: dict[str, str] = {
    "existence": "counterfactual",
    "relation": "spatial",
    "where": "spatial",
    "count": "counting",
    "colour": "attribute",
    "shape": "object",
}
TASKS: tuple[str, ...] = ("caption", "vqa")
DEGRADED_SHARE = 0.3  # of the images, as in the world VLM's training conversations
TEXTURE_MAX = 0.15
# Scenes with groups of identical objects. In random scenes (each object's shape, colour and size
# drawn on its own) "three large blue crosses" almost never happens, so a count edit that writes
# it is given away by the words alone; with such scenes true captions say it too.
GROUPED_SHARE = 0.5
GROUP_COUNTS = (1, 2, 3, 4)
_WORD = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")  # the word units of negatives.py
_ABSENT_WORDS = {"no", "zero", "0"}
_JOINERS = {",", "and"}
# Caption styles that are canonical renderings (fixed order and attributes) and those naming sizes.
ORDERED_STYLES: tuple[str, ...] = ("canonical", "geneval", "counted", "positional")
SIZED_STYLES: tuple[str, ...] = ("canonical", "positional")
Span = tuple[int, int]


@dataclass(frozen=True)
class Perturbation:
    """A response with one wrong edit, and where it is wrong.

    Attributes:
        text: the perturbed response.
        kind: one of :data:`PERTURBATION_TYPES`.
        edit: what was changed, in words (``"circle colour red -> blue"``).
        spans: character spans ``(start, end)`` of the wrong words in ``text``, in order.
    """

    text: str
    kind: str
    edit: str
    spans: tuple[Span, ...]

    @property
    def wrong_words(self) -> list[str]:
        return [self.text[s:e] for s, e in self.spans]


@dataclass
class TokenExample:
    """One (image, prompt, response) with the response's wrong spans, for the token reward model.

    Attributes:
        image: RGB ``PIL.Image`` (``canvas x canvas``).
        prompt: the user's turn (``"Describe the image."`` or a world question).
        response: the assistant's answer.
        spans: wrong character spans of ``response``; empty for a true response.
        kind: :data:`NONE` for a true response, else one of :data:`PERTURBATION_TYPES`.
        edit: the edit in words ("" for a true response).
        task: ``"caption"`` or ``"vqa"``.
        source: ``"rendered"`` or ``"degraded"``.
        objects: what the image really shows (``WorldObject`` tuple: the scene, or the
            degradation's ground truth), to check other responses against.
    """

    image: Image.Image
    prompt: str
    response: str
    spans: tuple[Span, ...]
    kind: str
    edit: str
    task: str
    source: str
    objects: tuple = ()

    @property
    def correct(self) -> bool:
        return not self.spans


# ---------------------------------------------------------------------------------------------
# Labels from a diff


def word_spans(text: str) -> list[tuple[str, int, int]]:
    """``(word, start, end)`` of every word and punctuation mark of ``text``."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def changed_spans(original: str, perturbed: str, anchor: tuple[str, ...] | None = None) -> tuple[Span, ...]:
    """Character spans of the words of ``perturbed`` that a word-level diff against ``original``
    marks as replaced or inserted (case-insensitive).

    A pure deletion marks the word of ``perturbed`` right after the gap (the one before it at the
    end), so that every edit leaves at least one labelled word.

    Args:
        original, perturbed: the two texts.
        anchor: words (lower case) that both texts contain once and that stay in place, e.g. the
            relation ``("left", "of")`` of a caption whose two sides were swapped: the parts before
            and after it are diffed separately (slot by slot), so that the words now in each slot
            are compared with the words that were there, not matched across the relation.

    Example: ``changed_spans("a red circle", "an orange circle") == ((0, 2), (3, 9))``.
    """
    a, b = word_spans(original), word_spans(perturbed)
    la, lb = [w.lower() for w, _, _ in a], [w.lower() for w, _, _ in b]
    cuts = None
    if anchor:
        i, j = _find(la, anchor), _find(lb, anchor)
        if i is not None and j is not None:
            cuts = ((0, i, 0, j), (i + len(anchor), len(la), j + len(anchor), len(lb)))
    marked: set[int] = set()
    for a0, a1, b0, b1 in cuts or ((0, len(la), 0, len(lb)),):
        matcher = SequenceMatcher(None, la[a0:a1], lb[b0:b1], autojunk=False)
        for tag, _, _, j1, j2 in matcher.get_opcodes():
            if tag in ("replace", "insert"):
                marked.update(range(b0 + j1, b0 + j2))
            elif tag == "delete" and b:
                marked.add(min(b0 + j1, len(b) - 1))
    return tuple((b[j][1], b[j][2]) for j in sorted(marked))


def _find(words: list[str], part: tuple[str, ...]) -> int | None:
    return next(
        (i for i in range(len(words) - len(part) + 1) if tuple(words[i : i + len(part)]) == part), None
    )


def _relation_words(text: str) -> tuple[str, ...] | None:
    """The first relation phrase of a caption as lower-case words (longest wording first)."""
    words = [w.lower() for w, _, _ in word_spans(text)]
    for i in range(len(words)):
        for phrase in sorted(RELATION_PHRASES, key=len, reverse=True):
            if tuple(words[i : i + len(phrase)]) == phrase:
                return phrase
    return None


# ---------------------------------------------------------------------------------------------
# Caption perturbations


def caption_perturbations(
    objects,
    text: str,
    rng: random.Random,
    *,
    style: str | None = None,
    n: int = 16,
    absent: int = 3,
    exclude_heldout: bool = True,
) -> list[Perturbation]:
    """Every minimal false edit of a true caption, typed and labelled.

    Args:
        objects: the objects the caption is true of (``WorldObject`` list).
        text: a caption of the world grammar, true of ``objects``.
        rng: randomness for the order of candidates and the absent objects tried.
        style: the caption's :data:`~selfcorrect.world.grammar.CAPTION_STYLES` style, if known:
            then only edits that still look like a caption of that style are kept
            (:func:`in_style`), and absent objects go where that style would name them.
        n: how many hard negatives at most (they mix edit kinds and families evenly, so a few
            cover every type the caption allows; each costs a parse and a check).
        absent: how many absent objects to try inserting (counterfactuals).
        exclude_heldout: never name a held-out (colour, shape) combination.

    Returns:
        :class:`Perturbation` list (the hard negatives in their order, then the insertions).
    """
    scene = Scene(tuple(objects))
    out = []
    for negative in hard_negatives(scene, text, n=n, rng=rng, exclude_heldout=exclude_heldout):
        if style is not None and not in_style(negative.text, style):
            continue
        # a swap of the two sides of a relation is diffed slot by slot around the relation
        anchor = _relation_words(text) if negative.edit.startswith("swap sides of") else None
        spans = changed_spans(text, negative.text, anchor)
        out.append(Perturbation(negative.text, _type_of(negative, text, objects), negative.edit, spans))
    out += _absent_objects(objects, text, rng, absent, style)
    return out


def in_style(text: str, style: str) -> bool:
    """Whether ``text`` still reads like a caption of ``style``, so that its form gives nothing away.

    The captions a VLM learns (:func:`~selfcorrect.world.grammar.caption`) follow fixed rules, and
    an edit can break them: a shape or colour edit can put an object out of the canonical order
    (shapes, then colours, then sizes), a count edit can make two groups identical or put a "no
    ..." group before a present one, an added size does not belong in a style without sizes. A
    model trained on such negatives learns to spot the broken form instead of looking at the
    image, and never flags the well-formed mistakes a real VLM makes. Checked:

    * every style: absent groups ("no circles") come after present ones;
    * ``canonical``, ``geneval``, ``counted``, ``positional`` (canonical renderings): the groups
      (after the related pair, in ``positional``) are in strictly increasing canonical order, and
      name exactly the attributes the style names (colour and size; colour only).
    """
    try:
        requirements = parse_prompt(text)
    except PromptError:
        return False
    groups = list(requirements.objects)
    absent = [g.count == 0 for g in groups]
    if absent != sorted(absent):
        return False
    if style not in ORDERED_STYLES:
        return True
    for g in groups:
        if g.count and g.query.colour is None:
            return False
        if (g.query.size is not None) != (style in SIZED_STYLES) and g.count:
            return False
    keys = [_order_key(g) for g in groups[2 if requirements.relations else 0 :]]
    return all(a < b for a, b in zip(keys, keys[1:]))


def _order_key(group) -> tuple:
    q = group.query
    colour = COLOURS.index(q.colour) if q.colour else -1
    return group.count == 0, SHAPES.index(q.shape), colour, SIZES.index(q.size) if q.size else -1


def perturb_caption(
    objects, text: str, kind: str | None, rng: random.Random, style: str | None = None
) -> Perturbation | None:
    """One perturbation of ``text`` of type ``kind`` (any type when None or when the caption
    allows none of that type); None when the caption has no false edit at all. ``style`` as for
    :func:`caption_perturbations`."""
    candidates = caption_perturbations(objects, text, rng, style=style)
    of_kind = [c for c in candidates if c.kind == kind]
    pool = of_kind or candidates
    return rng.choice(pool) if pool else None


def _type_of(negative: HardNegative, original: str, objects) -> str:
    """TLDR's type of a hard negative, from its edit description and what it edits."""
    edit = negative.edit
    if edit.startswith(("relation ", "swap sides of")):
        return "spatial"
    if edit.startswith("swap "):
        return "binding"
    if " count " in edit:
        old, new = edit.split(" count ", 1)[1].split(" -> ")
        if {old.split()[-1], new.split()[-1]} & _ABSENT_WORDS:
            return "counterfactual"  # existence flipped: "a circle" <-> "no circles"
        kind = "counting"
    elif edit.startswith("shape "):
        kind = "object"
    else:
        kind = "attribute"
    about = _edited_objects(original, negative.text, objects)
    if about and all(o.size == "small" for o in about):
        return "small_object"
    return kind


def _edited_objects(original: str, perturbed: str, objects) -> list:
    """The objects of the scene that the phrase edited by ``perturbed`` describes (in ``original``)."""
    a = [w.lower() for w, _, _ in word_spans(original)]
    b = [w.lower() for w, _, _ in word_spans(perturbed)]
    first = next(
        (i1 for tag, i1, *_ in SequenceMatcher(None, a, b, autojunk=False).get_opcodes() if tag != "equal"),
        None,
    )
    if first is None:
        return []
    noun = next((i for i in range(first, len(a)) if a[i] in NOUNS), None)
    if noun is None:
        return []
    colour = size = None
    j = noun - 1
    while j >= 0 and (a[j] in COLOURS or a[j] in SIZE_WORDS):
        colour = a[j] if a[j] in COLOURS else colour
        size = SIZE_WORDS[a[j]] if a[j] in SIZE_WORDS else size
        j -= 1
    shape = NOUNS[a[noun]]
    return [
        o
        for o in objects
        if o.shape == shape and (colour is None or o.colour == colour) and (size is None or o.size == size)
    ]


def _absent_objects(objects, text: str, rng: random.Random, tries: int, style: str | None = None):
    """Captions that also mention an object the scene does not have (counterfactuals).

    In the canonical styles the new group is put where the style would name it and the caption is
    rendered again (:func:`~selfcorrect.world.grammar.canonical_prompt`); otherwise the phrase goes
    in as one more list item before the last "and" ("a, b and c" -> "a, b, X and c"), or after the
    caption ("a" -> "a and X"). The phrase names a size when the caption names sizes. Only the
    inserted phrase is labelled (:func:`_phrase_spans`), not the "," or "and" that joins it.
    """
    present = {(o.colour, o.shape) for o in objects}
    options = [
        (c, s) for c in COLOURS for s in SHAPES if (c, s) not in present and not is_heldout_combo(c, s)
    ]
    rng.shuffle(options)
    words = {w.lower() for w, _, _ in word_spans(text)}
    sized = bool(words & set(SIZE_WORDS))
    out = []
    for colour, shape in options[:tries]:
        size = rng.choice(SIZES) if sized else None
        body = " ".join(w for w in (size, colour, shape) if w)
        if style in ORDERED_STYLES:
            group = CountRequirement(ObjectQuery(shape, colour, size), 1, exact=style == "counted")
            new, phrase = _insert_group(text, group), canonical_prompt(Requirements((group,)))
        else:
            phrase = f"{'an' if body[0] in 'aeiou' else 'a'} {body}"
            new = _insert_phrase(text, phrase)
        try:
            requirements = parse_prompt(new)
        except PromptError:  # e.g. a contradiction with "no crosses"
            continue
        if all(r.passed for r in evaluate(objects, requirements)):
            continue
        if style is not None and not in_style(new, style):
            continue
        spans = _phrase_spans(text, new, phrase)
        out.append(Perturbation(new, "counterfactual", f"add absent {body}", spans))
    return out


def _insert_phrase(text: str, phrase: str) -> str:
    stem, end = (text[:-1], text[-1]) if text.endswith(".") else (text, "")
    at = stem.rfind(" and ")
    if at >= 0:
        return stem[:at] + ", " + phrase + stem[at:] + end
    return stem + " and " + phrase + end


def _phrase_spans(original: str, new: str, phrase: str) -> tuple[Span, ...]:
    """The word spans of the inserted ``phrase`` in ``new``.

    Where the phrase occurs once more in ``new`` than in ``original`` that occurrence is taken
    (a diff can align repeated words such as "a green square, a green triangle" either way);
    otherwise the diff's inserted words without the joining "," and "and".
    """
    pattern = re.compile(r"(?<![A-Za-z0-9])" + re.escape(phrase.lower()) + r"(?![A-Za-z0-9])")
    found = [m.start() for m in pattern.finditer(new.lower())]
    if len(found) == 1 and not pattern.search(original.lower()):
        return tuple((found[0] + s, found[0] + e) for _, s, e in word_spans(phrase))
    return tuple((s, e) for s, e in changed_spans(original, new) if new[s:e].lower() not in _JOINERS)


def _insert_group(text: str, new: CountRequirement) -> str:
    """``text`` (a canonical rendering) with the group ``new`` added and rendered again in canonical
    order (after the related pair of a positional caption)."""
    requirements = parse_prompt(text)
    groups = list(requirements.objects)
    first = 2 if requirements.relations else 0
    at = next((i for i in range(first, len(groups)) if _order_key(groups[i]) > _order_key(new)), len(groups))
    groups.insert(at, new)
    prefix = text[: len(text) - len(text.lstrip())]
    lowered = text.lower()
    if lowered.startswith(GENEVAL_PREFIX + " "):
        prefix = text[: len(GENEVAL_PREFIX) + 1]
    return prefix + canonical_prompt(Requirements(tuple(groups), requirements.relations))


# ---------------------------------------------------------------------------------------------
# Answer perturbations


def perturb_answer(item, rng: random.Random) -> Perturbation:
    """A wrong answer of the right format to a world question (:class:`~selfcorrect.world.data.QA`);
    the whole answer is labelled."""
    truth = item.answer
    if item.kind in ("existence", "relation"):
        wrong = "no" if truth == "yes" else "yes"
    elif item.kind == "count":
        n = int(truth)
        wrong = str(rng.choice([m for m in (n - 1, n + 1, n + 2) if 0 <= m <= 5]))
    else:
        options = {"colour": COLOURS, "shape": SHAPES, "where": RELATIONS}[item.kind]
        wrong = rng.choice([o for o in options if o != truth])
    text = answer_text(wrong)
    return Perturbation(text, ANSWER_TYPES[item.kind], f"{item.kind} {truth} -> {wrong}", ((0, len(text)),))


# ---------------------------------------------------------------------------------------------
# The data set


def grouped_scene(seed: int, max_objects: int = 5) -> Scene:
    """A scene with groups of identical objects: 1-2 groups (same shape, colour and size), 1-4
    objects each, plus random objects up to 2, at least 2 and at most ``max_objects`` objects in
    all, none of a held-out (colour, shape) combination."""
    rng = random.Random(seed)
    groups, total = [], 0
    for _ in range(rng.randint(1, 2)):
        room = [c for c in GROUP_COUNTS if total + c <= max_objects]
        shape, colour, size = rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES)
        if (
            not room
            or is_heldout_combo(colour, shape)
            or any(g.query == ObjectQuery(shape, colour, size) for g in groups)
        ):
            continue
        count = rng.choice(room)
        groups.append(CountRequirement(ObjectQuery(shape, colour, size), count, exact=True))
        total += count
    extra = rng.randint(max(0, 2 - total), min(2, max_objects - total))
    if not groups:
        return _recoloured(random_scene(seed, min_objects=2, max_objects=max_objects))
    try:
        return _recoloured(sample_scene(Requirements(tuple(groups)), seed, distractors=extra))
    except UnsatisfiableError:  # no layout found: too many large objects
        return _recoloured(random_scene(seed, min_objects=2, max_objects=max_objects))


class PerturbationSet:
    """Seeded pairs of a true and a perturbed response about one image.

    Args:
        size: number of items (pairs).
        split: ``"train"``, ``"val"`` or ``"test"``: picks the seed from
            :data:`~selfcorrect.world.conversations.SPLIT_SEEDS` (scenes of different splits
            come from disjoint random streams).
        seed: overrides the split's seed.
        types: the perturbation types to draw, uniformly (default all of them).
        vqa_share: the share of items whose type has an answer edit (see :data:`ANSWER_TYPES`)
            that are VQA answers instead of captions.
        degraded_share: the share of degraded renders (ground truth from the degradation).
        grouped_share: the share of scenes with groups of identical objects
            (:func:`grouped_scene`); the rest are :func:`~selfcorrect.world.sampling.random_scene`.
        canvas: image side in pixels.

    ``set[i]`` is ``(true, perturbed)``: two :class:`TokenExample` with the same image object and
    prompt. The perturbed one has the drawn type when a caption or an answer about the image
    allows it; otherwise new scenes are drawn, and after five another type is taken.
    """

    def __init__(
        self,
        size: int,
        split: str = "train",
        *,
        seed: int | None = None,
        types: tuple[str, ...] = PERTURBATION_TYPES,
        vqa_share: float = 0.3,
        degraded_share: float = DEGRADED_SHARE,
        grouped_share: float = GROUPED_SHARE,
        canvas: int = DEFAULT_CANVAS,
    ):
        if split not in SPLIT_SEEDS:
            raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLIT_SEEDS)}")
        unknown = [t for t in types if t not in PERTURBATION_TYPES]
        if unknown or not types:
            raise ValueError(
                f"unknown perturbation types {unknown}; types are {', '.join(PERTURBATION_TYPES)}"
            )
        if size < 0:
            raise ValueError(f"size must be at least 0, got {size}")
        self.size, self.split, self.types = size, split, tuple(types)
        self.seed = SPLIT_SEEDS[split] if seed is None else seed
        self.vqa_share, self.degraded_share, self.canvas = vqa_share, degraded_share, canvas
        self.grouped_share = grouped_share

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[TokenExample, TokenExample]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a set of {self.size}")
        rng = random.Random(_derive(self.seed, index, "tldr"))
        kind = rng.choice(self.types)
        for attempt in range(20):
            image, objects, source = self._image(rng)
            pair = None
            if kind in ANSWER_TYPES.values() and rng.random() < self.vqa_share:
                pair = self._vqa(rng, objects, kind)
            # the drawn type in a caption, else in an answer; a few new scenes; then any type
            pair = pair or self._caption(rng, objects, kind, strict=True) or self._vqa(rng, objects, kind)
            if pair is None and attempt >= 4:
                pair = self._caption(rng, objects, kind, strict=False)
            if pair is not None:
                prompt, original, perturbation, task = pair
                common = {
                    "image": image,
                    "prompt": prompt,
                    "task": task,
                    "source": source,
                    "objects": tuple(objects),
                }
                true = TokenExample(response=original, spans=(), kind=NONE, edit="", **common)
                wrong = TokenExample(
                    response=perturbation.text,
                    spans=perturbation.spans,
                    kind=perturbation.kind,
                    edit=perturbation.edit,
                    **common,
                )
                return true, wrong
        raise RuntimeError("no perturbable scene in 20 draws")  # practically unreachable

    def _image(self, rng: random.Random):
        """A rendered or degraded image, the objects really in it, and which it is."""
        while True:
            if rng.random() < self.grouped_share:
                scene = grouped_scene(rng.randrange(2**31))
            else:
                scene = _recoloured(random_scene(rng.randrange(2**31), max_objects=5))
            scene = replace(scene, texture=rng.uniform(0, TEXTURE_MAX) if rng.random() < 0.5 else 0.0)
            if rng.random() < self.degraded_share:
                image, truth = degrade(scene, rng.randrange(2**31), size=self.canvas)
                if truth and _usable(truth):
                    return image, [_as_object(d) for d in truth], "degraded"
                continue
            return render(scene, self.canvas), list(scene.objects), "rendered"

    def _caption(self, rng, objects, kind, *, strict: bool):
        """(prompt, caption, perturbation, task) of type ``kind`` (``strict``) or of any type."""
        # spatial edits need a relation, which only positional captions name
        style = "positional" if kind == "spatial" else rng.choice(CAPTION_STYLES)
        text = caption(Scene(tuple(objects)), style, rng)
        candidates = caption_perturbations(objects, text, rng, style=style)
        pool = [c for c in candidates if c.kind == kind] or ([] if strict else candidates)
        return (P.DESCRIBE, text, rng.choice(pool), "caption") if pool else None

    def _vqa(self, rng, objects, kind):
        items = [q for q in scene_qa(Scene(tuple(objects)), rng) if ANSWER_TYPES[q.kind] == kind]
        if not items:
            return None
        item = rng.choice(items)
        return vqa_prompt(item.question), answer_text(item.answer), perturb_answer(item, rng), "vqa"
