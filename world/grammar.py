"""The prompt grammar of the embedded world: prompts -> :class:`Requirements`, scenes -> captions.

Grammar (case-, whitespace- and trailing-period-insensitive; ``|`` = or, ``[]`` = optional)::

    prompt     := [prefix] clause (joiner clause)*
    prefix     := ("a" | "an") FRAME LINK | "there is" | "there are"
                  FRAME = photo, photograph, image, picture, drawing, rendering, scene
                  LINK  = of, with, showing, containing            ("a photo of ...", GenEval's template)
    joiner     := "," ["and"] | "and" | "with" | "but"
    clause     := phrase [("is" | "are")] [relation phrase]
                | "without" ["any" | "a" | "an"] modifier* SHAPE   (= "and no ...")
    phrase     := determiner modifier* SHAPE | "the" modifier* SHAPE | "itself" (after a relation)
    determiner := "a" | "an" | NUMBER | "no" | "at least" NUMBER | "exactly" NUMBER
                  NUMBER = zero..four or 0..4
    modifier   := COLOUR | SIZE   (small; little, tiny = small; large; big = large), in any order
    SHAPE      := circle(s) | square(s) | triangle(s) | cross(es)   (number agreement is not enforced)
    relation   := ["to the" | "on the"] ("left of" | "right of") | "above" | "below" | "under" | "beneath"
                | "underneath"

Semantics (those of :func:`~selfcorrect.world.requirements.evaluate`):

* ``"a red circle"`` = at least one; ``"two red circles"`` = exactly two (other circles do not
  matter); ``"no circles"`` / ``"zero circles"`` / ``"without circles"`` = none; ``"at least two"``.
* Each distinct description is one object group. A description repeated inside a relation, or
  introduced by ``"the"``, refers back to the group already named (``"a circle left of a square
  and a triangle above the square"``); ``"the circle"`` picks the one earlier group it fits.
* ``"A left of B"`` = every A is left of every B (GenEval's centre-offset rule). A relation binds
  the phrases right before and after it: in ``"a circle and a triangle left of a square"`` only
  the triangle is related to the square.
* ``"on top of"`` and ``"over"`` are refused: in a flat picture they can also mean overlapping.

Errors are one :class:`~selfcorrect.errors.PromptError` naming the part not understood, or an
:class:`~selfcorrect.errors.UnsatisfiableError` for what can be seen to be impossible without
sampling (counts over four, too many objects, contradictory counts or relations);
:func:`~selfcorrect.world.sampling.sample_scene` reports what only a failed layout reveals.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from selfcorrect.errors import PromptError, UnsatisfiableError
from selfcorrect.world.requirements import (
    CountRequirement,
    ObjectQuery,
    RelationRequirement,
    Requirements,
)
from selfcorrect.world.scene import COLOURS, MAX_OBJECTS, RELATIONS, SHAPES, SIZES, Scene, relative_position

MAX_PROMPT_CHARS = 200  # longer prompts are refused: no world scene needs more words than this
MAX_COUNT = 4  # the largest count a prompt may ask for (CountRequirement's range is 0..4)

# Number words the grammar reads as counts.
NUMBER_WORDS: dict[str, int] = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4}
_NUMBER_NAMES: tuple[str, ...] = tuple(NUMBER_WORDS)  # index -> word, for rendering counts
# Larger numbers are recognised only to say that they are too many, not "not understood".
TOO_MANY_WORDS: dict[str, int] = {
    w: i + 5 for i, w in enumerate("five six seven eight nine ten eleven twelve".split())
}
# Size words and the size they mean.
SIZE_WORDS: dict[str, str] = {
    "small": "small",
    "little": "small",
    "tiny": "small",
    "large": "large",
    "big": "large",
}
# Shape nouns, singular and plural, and the shape they name.
NOUNS: dict[str, str] = {
    **{s: s for s in SHAPES},
    **{s + ("es" if s.endswith("s") else "s"): s for s in SHAPES},
}
# Prefixes such as "a photo of": ("a" | "an") FRAME LINK.
PREFIX_FRAMES: tuple[str, ...] = ("photo", "photograph", "image", "picture", "drawing", "rendering", "scene")
PREFIX_LINKS: tuple[str, ...] = ("of", "with", "showing", "containing")
# Every accepted relation phrase (as a word tuple) and the relation it means.
RELATION_PHRASES: dict[tuple[str, ...], str] = {
    ("left", "of"): "left of",
    ("to", "the", "left", "of"): "left of",
    ("on", "the", "left", "of"): "left of",
    ("right", "of"): "right of",
    ("to", "the", "right", "of"): "right of",
    ("on", "the", "right", "of"): "right of",
    ("above",): "above",
    ("below",): "below",
    ("under",): "below",
    ("beneath",): "below",
    ("underneath",): "below",
}
# Relation-like phrases the world cannot express, each with the reason given to the user.
REFUSED_RELATIONS: dict[tuple[str, ...], str] = {
    ("on", "top", "of"): '"on top of" can also mean overlapping in a flat picture; say "above"',
    ("over",): '"over" can also mean overlapping in a flat picture; say "above"',
    ("next", "to"): "relations are left of, right of, above, below",
    ("beside",): "relations are left of, right of, above, below",
    ("near",): "relations are left of, right of, above, below",
    ("behind",): "the world is flat; relations are left of, right of, above, below",
    ("in", "front", "of"): "the world is flat; relations are left of, right of, above, below",
    ("between",): "relations are left of, right of, above, below, between two objects",
}
JOINERS: tuple[str, ...] = (",", "and", "with", "but")  # words that separate clauses
CAPTION_STYLES: tuple[str, ...] = ("canonical", "geneval", "natural", "positional", "counted")

# Wordings used when rendering prompts with varied phrasing (suites, natural captions). Every one
# of them parses back to the same Requirements.
PREFIX_CHOICES: tuple[str, ...] = (
    *(
        f"{'an' if frame[0] in 'aeiou' else 'a'} {frame} {link}"
        for frame in PREFIX_FRAMES
        for link in PREFIX_LINKS
    ),
    "there is",  # becomes "there are" before a plural
)
GENEVAL_PREFIX = "a photo of"  # GenEval's own template, the most frequent prefix in the suites
SIZE_CHOICES: dict[str, tuple[str, ...]] = {
    size: tuple(w for w, s in SIZE_WORDS.items() if s == size) for size in SIZES
}
RELATION_CHOICES: dict[str, tuple[str, ...]] = {
    rel: tuple(" ".join(words) for words, r in RELATION_PHRASES.items() if r == rel) for rel in RELATIONS
}

_SHAPE_HINT = f"shapes are {', '.join(SHAPES)}"
_MODIFIER_HINT = f"colours are {', '.join(COLOURS)}; sizes are {', '.join(SIZES)}"
_DETERMINER_HINT = (
    'an object starts with "a", "an", "the", "no", "at least", "exactly" or a number from one to '
    'four, e.g. "two red circles"'
)
_AFTER_CLAUSE_HINT = (
    f'expected "and", "," or "with" before the next object, or a relation ({", ".join(RELATIONS)})'
)


# ---------------------------------------------------------------------------------------------
# Parsing


def parse_prompt(text: str) -> Requirements:
    """Parse a prompt of the world grammar (see the module docstring).

    Args:
        text: e.g. ``"a photo of two red circles and a blue square"``.

    Returns:
        The :class:`Requirements`, with ``text`` set to ``text`` unchanged.

    Raises:
        PromptError: empty or over-long text, or a word outside the grammar (the message names it).
        UnsatisfiableError: a count over four, more than ``MAX_OBJECTS`` objects, or requirements
            that contradict each other.
    """
    if not isinstance(text, str):
        raise PromptError(f"a prompt must be text, got {type(text).__name__}")
    return _Parser(text).parse()


@dataclass
class _Group:
    """An object group being built: its query and the count asked for so far."""

    query: ObjectQuery
    count: int
    exact: bool

    def requirement(self) -> CountRequirement:
        return CountRequirement(self.query, self.count, self.exact)


@dataclass(frozen=True)
class _Phrase:
    """One parsed noun phrase. ``count`` is None for "the ..." (it names an earlier group)."""

    query: ObjectQuery
    count: int | None
    exact: bool
    words: str  # the phrase as written, for error messages


class _Parser:
    """Recursive-descent parser over lower-case word tokens; builds groups and relations."""

    def __init__(self, text: str):
        self.original = text  # kept unchanged in Requirements.text
        self.text = text.strip()
        if not self.text:
            raise PromptError("the prompt is empty")
        if len(self.text) > MAX_PROMPT_CHARS:
            raise PromptError(
                f"the prompt is {len(self.text)} characters long; the limit is {MAX_PROMPT_CHARS}"
            )
        self.tokens = _tokenize(self.text)
        if not self.tokens:
            raise PromptError("the prompt is empty")
        self.pos = 0
        self.groups: list[_Group] = []
        self.relations: list[RelationRequirement] = []

    # -- token helpers -----------------------------------------------------------------------

    def peek(self, k: int = 0) -> str | None:
        i = self.pos + k
        return self.tokens[i] if i < len(self.tokens) else None

    def accept(self, *words: str) -> bool:
        """Consume ``words`` if they come next."""
        if tuple(self.tokens[self.pos : self.pos + len(words)]) == words:
            self.pos += len(words)
            return True
        return False

    def match(self, phrases) -> tuple[str, ...] | None:
        """The longest of ``phrases`` (word tuples) that comes next (not consumed), or None."""
        for phrase in sorted(phrases, key=len, reverse=True):
            if tuple(self.tokens[self.pos : self.pos + len(phrase)]) == phrase:
                return phrase
        return None

    def not_understood(self, word: str, hint: str) -> PromptError:
        return PromptError(f'could not understand "{word}" in "{self.text}": {hint}')

    def too_short(self, expected: str) -> PromptError:
        return PromptError(f'"{self.text}" ends too early: expected {expected} after "{self.tokens[-1]}"')

    # -- grammar -----------------------------------------------------------------------------

    def parse(self) -> Requirements:
        self.prefix()
        self.clause()
        while self.peek() is not None:
            # "without" starts a clause of its own; anything else needs a joiner first.
            if self.peek() != "without":
                if self.accept(","):
                    self.accept("and")  # the Oxford comma: ", and"
                elif self.peek() in JOINERS:
                    self.pos += 1
                else:
                    raise self.refused_relation() or self.not_understood(self.peek(), _AFTER_CLAUSE_HINT)
            self.clause()
        return self.finish()

    def prefix(self) -> None:
        if self.accept("there", "is") or self.accept("there", "are"):
            return
        if self.peek() in ("a", "an") and self.peek(1) in PREFIX_FRAMES and self.peek(2) in PREFIX_LINKS:
            self.pos += 3

    def clause(self) -> None:
        start = self.pos
        if self.accept("without"):  # "without (any) red circles" = "no red circles"
            for article in ("any", "a", "an"):
                if self.accept(article):
                    break
            query = self.description()
            self.add(_Phrase(query, 0, True, " ".join(self.tokens[start : self.pos])), related=False)
            return
        subject = self.phrase()
        if self.peek() in ("is", "are"):  # "a circle is left of a square"
            self.pos += 1
            if self.match(RELATION_PHRASES) is None:
                hint = f"relations are {', '.join(RELATIONS)}"
                raise self.refused_relation() or self.not_understood(self.peek() or self.tokens[-1], hint)
        relation = self.match(RELATION_PHRASES)
        if relation is None:
            if subject is None:
                raise self.not_understood("itself", "only the object after a relation can be itself")
            self.add(subject, related=False)
            return
        self.pos += len(relation)
        if subject is None or subject.count == 0:
            raise self.not_understood(
                " ".join(self.tokens[start : self.pos]), "an object that is not there cannot have a position"
            )
        reference = self.phrase()
        s = self.add(subject, related=True)
        t = s if reference is None else self.add(reference, related=True)
        self.relate(s, RELATION_PHRASES[relation], t)

    def refused_relation(self) -> PromptError | None:
        phrase = self.match(REFUSED_RELATIONS)
        if phrase is None:
            return None
        return self.not_understood(" ".join(phrase), REFUSED_RELATIONS[phrase])

    def phrase(self) -> _Phrase | None:
        """A noun phrase; None for "itself"."""
        word = self.peek()
        if word == "itself":
            self.pos += 1
            return None
        start = self.pos
        if self.accept("the"):
            count, exact = None, False
        elif self.accept("at", "least"):
            count, exact = self.number(), False
            if count == 0:
                raise self.not_understood("at least zero", 'ask for at least one, or for none with "no"')
        elif self.accept("exactly"):
            count, exact = self.number(), True
        elif self.accept("a") or self.accept("an"):
            count, exact = 1, False
        elif self.accept("no"):
            count, exact = 0, True
        elif word is not None and _number_value(word) is not None:
            count, exact = self.number(), True
        elif word is None:
            raise self.too_short("an object")
        else:
            raise self.not_understood(word, _DETERMINER_HINT)
        query = self.description()
        return _Phrase(query, count, exact, " ".join(self.tokens[start : self.pos]))

    def number(self) -> int:
        word = self.peek()
        if word is None:
            raise self.too_short("a number")
        value = _number_value(word)
        if value is None:
            raise self.not_understood(word, "expected a number from zero to four")
        if value > MAX_COUNT:
            raise UnsatisfiableError(
                f'"{word}" in "{self.text}" asks for {value} of a kind, but the world shows zero to '
                f"{_NUMBER_NAMES[MAX_COUNT]} of a kind"
            )
        self.pos += 1
        return value

    def description(self) -> ObjectQuery:
        """Modifiers and a shape noun -> their query."""
        start = self.pos
        colour = size = None
        while True:
            word = self.peek()
            if word is None or word in JOINERS or self.match(RELATION_PHRASES):
                so_far = " ".join(self.tokens[max(start - 1, 0) : self.pos])
                if word is None:
                    raise self.too_short(f"a shape ({', '.join(SHAPES)})")
                raise self.not_understood(word, f'expected a shape after "{so_far}": {_SHAPE_HINT}')
            self.pos += 1
            if word in NOUNS:
                return ObjectQuery(NOUNS[word], colour, size)
            if word in COLOURS:
                if colour not in (None, word):
                    raise self.not_understood(word, f"one object cannot be both {colour} and {word}")
                colour = word
            elif word in SIZE_WORDS:
                if size not in (None, SIZE_WORDS[word]):
                    raise self.not_understood(
                        word, f"one object cannot be both {size} and {SIZE_WORDS[word]}"
                    )
                size = SIZE_WORDS[word]
            else:
                # A word followed by more of the phrase was meant as a colour or size; one that
                # ends the phrase was meant as the shape.
                following = self.peek()
                more = following in NOUNS or following in COLOURS or following in SIZE_WORDS
                raise self.not_understood(word, _MODIFIER_HINT if more else _SHAPE_HINT)

    # -- building the requirements -----------------------------------------------------------

    def add(self, phrase: _Phrase, related: bool) -> int:
        """The index of the group ``phrase`` names, creating or merging it (see module docstring)."""
        if phrase.count is None:  # "the ...": an earlier group it fits
            index = self.resolve(phrase)
            if index is not None:
                return index
            phrase = replace(phrase, count=1)  # nothing earlier: read "the circle" as "a circle"
        for i, group in enumerate(self.groups):
            if group.query == phrase.query:
                self.merge(i, phrase, related)
                return i
        self.groups.append(_Group(phrase.query, phrase.count, phrase.exact))
        return len(self.groups) - 1

    def resolve(self, phrase: _Phrase) -> int | None:
        exact = [i for i, g in enumerate(self.groups) if g.query == phrase.query]
        if exact:
            return exact[0]
        fits = [i for i, g in enumerate(self.groups) if _covers(phrase.query, g.query)]
        if len(fits) > 1:
            options = " or ".join(f"the {self.groups[i].query.phrase()}" for i in fits)
            raise PromptError(
                f'"{phrase.words}" in "{self.text}" could mean {options}: add its colour or size'
            )
        return fits[0] if fits else None

    def merge(self, i: int, phrase: _Phrase, related: bool) -> None:
        group = self.groups[i]
        new = CountRequirement(phrase.query, phrase.count, phrase.exact)
        old = group.requirement()
        conflict = (
            (old.count == 0) != (new.count == 0)
            or (old.exact and new.exact and old.count != new.count)
            or (old.exact and new.count > old.count)
            or (new.exact and old.count > new.count)
        )
        if conflict:
            raise UnsatisfiableError(
                f'"{self.text}" cannot be satisfied: it asks for {old.describe()} and for {new.describe()}'
            )
        if not related:
            plural = phrase.query.phrase(plural=True)
            raise PromptError(
                f'"{self.text}" names "{phrase.query.phrase()}" twice: say "two {plural}" to ask for two '
                f'of them, or "the {phrase.query.phrase()}" to refer back'
            )
        if new.exact or not old.exact:
            group.count, group.exact = max(old.count, new.count), new.exact or old.exact

    def relate(self, s: int, relation: str, t: int) -> None:
        if s == t:
            plural = self.groups[s].query.phrase(plural=True)
            raise UnsatisfiableError(
                f'"{self.text}" cannot be satisfied: it asks for {plural} {relation} {plural}, but a '
                f"relation must hold between every pair of the two groups, so a group cannot be "
                f'{relation} itself; tell the objects apart by colour or size, e.g. "a red circle '
                f'{relation} a blue circle"'
            )
        for i in (s, t):
            if self.groups[i].count == 0:
                raise PromptError(
                    f'"{self.text}" asks for no {self.groups[i].query.phrase(plural=True)} but gives '
                    "them a position"
                )
        rel = RelationRequirement(s, relation, t)
        if rel not in self.relations:
            self.relations.append(rel)

    def finish(self) -> Requirements:
        groups = self.groups
        if all(g.count == 0 for g in groups):
            raise PromptError(
                f'"{self.text}" only names absent objects: ask for at least one object that is there, '
                'e.g. "a circle and no red triangles"'
            )
        total = sum(g.count for g in groups)
        if total > MAX_OBJECTS:
            raise UnsatisfiableError(
                f'"{self.text}" asks for {total} objects, but the world fits at most {MAX_OBJECTS} on a canvas'
            )
        for big in groups:
            for small in groups:
                if (
                    small is not big
                    and big.exact
                    and _covers(big.query, small.query)
                    and small.count > big.count
                ):
                    raise UnsatisfiableError(
                        f'"{self.text}" cannot be satisfied: it asks for {big.requirement().describe()} '
                        f"and {small.requirement().describe()}, but every {small.query.phrase()} is a "
                        f"{big.query.phrase()}"
                    )
        self.check_relation_cycles()
        return Requirements(tuple(g.requirement() for g in groups), tuple(self.relations), text=self.original)

    def check_relation_cycles(self) -> None:
        """Refuse relations that order objects in a circle along one axis (A left of B left of A).

        Every object of a group inside A inherits A's relations, so "a circle left of a square and
        a red circle right of the square" is caught too. Only pairs of disjoint groups are used:
        a relation between overlapping groups says nothing about an object in both.
        """
        groups = self.groups
        present = [i for i, g in enumerate(groups) if g.count > 0]
        for before, after in (("left of", "right of"), ("above", "below")):
            edges: set[tuple[int, int]] = set()  # (i, j): every object of i comes before every object of j
            for rel in self.relations:
                if rel.relation not in (before, after):
                    continue
                a, b = (
                    (rel.subject, rel.reference) if rel.relation == before else (rel.reference, rel.subject)
                )
                for i in present:
                    for j in present:
                        if (
                            _covers(groups[a].query, groups[i].query)
                            and _covers(groups[b].query, groups[j].query)
                            and _disjoint(groups[i].query, groups[j].query)
                        ):
                            edges.add((i, j))
            cycle = _find_cycle(edges)
            if cycle:
                names = [groups[i].query.phrase() for i in cycle]
                chain = " and ".join(f"the {a} {before} the {b}" for a, b in zip(names, names[1:]))
                raise UnsatisfiableError(f'"{self.text}" cannot be satisfied: it puts {chain}')


def _tokenize(text: str) -> list[str]:
    """Lower-case words and commas; a trailing period is dropped."""
    body = text.lower().rstrip(". \t\n")
    for ch in body:
        if not (ch.isascii() and (ch.isalnum() or ch.isspace() or ch == ",")):
            raise PromptError(
                f'could not understand "{ch}" in "{text}": prompts use letters, digits, spaces and commas'
            )
    return body.replace(",", " , ").split()


def _number_value(word: str) -> int | None:
    if word.isdigit():
        return int(word)
    return NUMBER_WORDS.get(word, TOO_MANY_WORDS.get(word))


def _covers(general: ObjectQuery, specific: ObjectQuery) -> bool:
    """True if every object ``specific`` matches is also matched by ``general``."""
    return (
        general.shape == specific.shape
        and general.colour in (None, specific.colour)
        and general.size in (None, specific.size)
    )


def _disjoint(a: ObjectQuery, b: ObjectQuery) -> bool:
    """True if no object can match both queries."""
    return (
        a.shape != b.shape
        or (a.colour is not None and b.colour is not None and a.colour != b.colour)
        or (a.size is not None and b.size is not None and a.size != b.size)
    )


def _find_cycle(edges: set[tuple[int, int]]) -> list[int] | None:
    """A directed cycle ``[a, b, ..., a]`` in ``edges``, or None (depth-first search)."""
    graph: dict[int, list[int]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
    on_path: list[int] = []
    done: set[int] = set()

    def visit(node: int) -> list[int] | None:
        on_path.append(node)
        for nxt in graph.get(node, []):
            if nxt in on_path:
                return on_path[on_path.index(nxt) :] + [nxt]
            if nxt not in done:
                found = visit(nxt)
                if found:
                    return found
        on_path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            found = visit(node)
            if found:
                return found
    return None


# ---------------------------------------------------------------------------------------------
# Rendering requirements as text


@dataclass(frozen=True)
class _Phrasing:
    """How to word a :class:`Requirements`; the defaults give the canonical wording."""

    prefix: str = ""  # e.g. "a photo of"; "there is" agrees in number with the first object
    sizes: dict[str, str] = field(default_factory=lambda: {s: s for s in SIZES})
    relations: dict[str, str] = field(default_factory=lambda: {r: r for r in RELATIONS})
    digits: bool = False  # "2 circles" instead of "two circles"
    joiner: str = "list"  # "list": "a, b and c"; "and": "a and b and c"; "with": "a with b and c"
    without: bool = False  # "a square without circles" instead of "a square and no circles"
    capitalise: bool = False  # "A photo of ... ." (upper-case first letter, final period)

    @classmethod
    def random(cls, rng: random.Random) -> _Phrasing:
        """A random wording: GenEval's "a photo of" half the time, no prefix in 15%."""
        draw = rng.random()
        prefix = GENEVAL_PREFIX if draw < 0.5 else "" if draw < 0.65 else rng.choice(PREFIX_CHOICES)
        return cls(
            prefix=prefix,
            sizes={s: rng.choice(SIZE_CHOICES[s]) for s in SIZES},
            relations={r: rng.choice(RELATION_CHOICES[r]) for r in RELATIONS},
            digits=rng.random() < 0.2,
            joiner=rng.choice(("list", "list", "and", "with")),
            without=rng.random() < 0.3,
        )


def canonical_prompt(requirements: Requirements) -> str:
    """The canonical text of ``requirements``: ``parse_prompt`` of it gives them back.

    Objects are named in order, each once; a relation between consecutive new objects is written
    inline ("a circle left of a square"), any other refers back with "the". The round trip holds
    for every Requirements that :func:`parse_prompt` can return.
    """
    return _render(requirements, _Phrasing())


def varied_prompt(requirements: Requirements, rng: random.Random) -> str:
    """A randomly worded prompt for ``requirements`` (prefix, synonyms, digits, joiners) that
    parses back to them; used by the prompt suites and the natural captions."""
    return _render(requirements, _Phrasing.random(rng))


def _render(req: Requirements, ph: _Phrasing) -> str:
    def words(i: int, plural: bool) -> str:
        q = req.objects[i].query
        noun = q.shape + ("es" if plural and q.shape.endswith("s") else "s" if plural else "")
        return " ".join(w for w in (ph.sizes[q.size] if q.size else None, q.colour, noun) if w)

    def number(n: int) -> str:
        return str(n) if ph.digits else _NUMBER_NAMES[n]

    def group(i: int, definite: bool) -> str:
        r = req.objects[i]
        if definite:
            return "the " + words(i, plural=r.count > 1)
        if r.count == 0:
            return "no " + words(i, plural=True)
        if r.exact:
            return f"{number(r.count)} {words(i, plural=r.count != 1)}"
        if r.count == 1:
            text = words(i, plural=False)
            return ("an " if text[0] in "aeiou" else "a ") + text
        return f"at least {number(r.count)} {words(i, plural=True)}"

    plan = _clause_plan(req)
    mentioned: set[int] = set()
    clauses: list[tuple[str, bool]] = []  # (text, names an absent group)
    for s, relation, t in plan:
        parts = [group(s, s in mentioned)]
        mentioned.add(s)
        if relation is not None:
            parts += [ph.relations[relation], group(t, t in mentioned)]
            mentioned.add(t)
        clauses.append((" ".join(parts), req.objects[s].count == 0))

    absent_at_end = [absent for _, absent in clauses] == sorted(absent for _, absent in clauses)
    if ph.without and absent_at_end and not clauses[0][1]:
        present = [text for text, absent in clauses if not absent]
        withouts = [" ".join(["without", *text.split()[1:]]) for text, absent in clauses if absent]
        text = " ".join([_join(present, ph.joiner), " and ".join(withouts)]).strip()
    else:
        text = _join([text for text, _ in clauses], ph.joiner)

    prefix = ph.prefix
    if ph.joiner == "with" and prefix.endswith(" with"):  # not "a scene with a circle with a square"
        return _render(req, replace(ph, joiner="list"))
    if prefix == "there is":
        first = req.objects[plan[0][0]]
        prefix = "there is" if first.count == 1 else "there are"
    text = f"{prefix} {text}" if prefix else text
    return text[0].upper() + text[1:] + "." if ph.capitalise else text


def _join(texts: list[str], joiner: str) -> str:
    if len(texts) == 1:
        return texts[0]
    if joiner == "and":
        return " and ".join(texts)
    if joiner == "with":
        return f"{texts[0]} with {_join(texts[1:], 'list')}"
    return ", ".join(texts[:-1]) + " and " + texts[-1]


def _clause_plan(req: Requirements) -> list[tuple[int, str | None, int | None]]:
    """Clauses ``(subject, relation, reference)`` whose reading order re-creates ``req``.

    Groups must be introduced in index order and relations stated in order. A pending relation is
    stated as soon as the groups it would introduce are exactly the next ones; otherwise the next
    group is introduced on its own (then the relation can refer back with "the").
    """
    plan: list[tuple[int, str | None, int | None]] = []
    mentioned: set[int] = set()
    pending = list(req.relations)
    next_group = 0
    while next_group < len(req.objects) or pending:
        if pending:
            rel = pending[0]
            new = [i for i in (rel.subject, rel.reference) if i not in mentioned]
            if new == list(range(next_group, next_group + len(new))):
                plan.append((rel.subject, rel.relation, rel.reference))
                mentioned.update(new)
                next_group += len(new)
                pending.pop(0)
                continue
        plan.append((next_group, None, None))
        mentioned.add(next_group)
        next_group += 1
    return plan


# ---------------------------------------------------------------------------------------------
# Captions


def caption(scene: Scene, style: str = "canonical", rng: random.Random | None = None) -> str:
    """Describe a scene in one of :data:`CAPTION_STYLES`; the scene satisfies the caption.

    * ``canonical``: identical objects grouped with counts, e.g. "two small red circles and a
      large blue square" (one object = "a", i.e. at least one).
    * ``geneval``: GenEval's template without sizes, e.g. "a photo of two red circles and a blue
      square".
    * ``natural``: random wording (prefixes, synonyms, digits, order, how much detail per shape),
      sometimes naming a shape that is absent ("... and no triangles").
    * ``positional``: canonical, with a relation between two object groups when one clearly holds
      (every pair shows that one relation and no diagonal second one), e.g. "a small red circle
      left of a large blue square and a green cross".
    * ``counted``: exact counts of every shape and colour, absent shapes included, e.g. "one red
      circle, two blue squares, no triangles and no crosses".

    More than four identical objects are described as "at least four".

    Args:
        scene: a scene with at least one object.
        style: one of :data:`CAPTION_STYLES`.
        rng: randomness for ``natural`` and for the choice of relation in ``positional``;
            default ``random.Random(scene.seed)``, so a scene always gets the same caption.

    Returns:
        A prompt of the grammar: ``evaluate(scene.objects, parse_prompt(text))`` all pass.
    """
    if style not in CAPTION_STYLES:
        raise ValueError(f"unknown caption style {style!r}; styles are {', '.join(CAPTION_STYLES)}")
    objects = list(scene.objects)
    if not objects:
        raise ValueError("an empty scene has no caption: a prompt must name an object that is there")
    rng = rng if rng is not None else random.Random(scene.seed)
    full = ("size", "colour")
    if style == "canonical":
        return canonical_prompt(Requirements(_groups(objects, lambda shape: full)))
    if style == "geneval":
        return f"{GENEVAL_PREFIX} " + canonical_prompt(
            Requirements(_groups(objects, lambda shape: ("colour",)))
        )
    if style == "counted":
        groups = _groups(objects, lambda shape: ("colour",), exact_singletons=True)
        present = {o.shape for o in objects}
        absent = tuple(CountRequirement(ObjectQuery(s), 0, exact=True) for s in SHAPES if s not in present)
        return canonical_prompt(Requirements(groups + absent))
    if style == "positional":
        return canonical_prompt(_positional(objects, rng))
    return _natural(objects, rng)


def _groups(objects, attributes_of, exact_singletons: bool = False) -> tuple[CountRequirement, ...]:
    """Objects grouped by shape plus the attributes ``attributes_of(shape)`` names (a tuple of
    "size" / "colour"), in SHAPES / COLOURS / SIZES order, each group with its exact count
    ("a" for one unless ``exact_singletons``; "at least four" above four)."""
    counts: dict[tuple, int] = {}
    for o in objects:
        kept = attributes_of(o.shape)
        key = (o.shape, o.colour if "colour" in kept else None, o.size if "size" in kept else None)
        counts[key] = counts.get(key, 0) + 1

    def order(key):
        shape, colour, size = key
        return SHAPES.index(shape), COLOURS.index(colour) if colour else -1, SIZES.index(size) if size else -1

    groups = []
    for key in sorted(counts, key=order):
        n, query = counts[key], ObjectQuery(*key)
        if n > MAX_COUNT:
            groups.append(CountRequirement(query, MAX_COUNT, exact=False))
        else:
            groups.append(CountRequirement(query, n, exact=n > 1 or exact_singletons))
    return tuple(groups)


def _positional(objects, rng: random.Random) -> Requirements:
    groups = _groups(objects, lambda shape: ("size", "colour"))
    members = [[o for o in objects if g.query.matches(o)] for g in groups]
    candidates = []  # (subject, relation, reference) that hold alone for every pair
    for i in range(len(groups)):
        for j in range(len(groups)):
            if i != j:
                seen = {frozenset(relative_position(a.box, b.box)) for a in members[i] for b in members[j]}
                if len(seen) == 1 and len(relations := next(iter(seen))) == 1:
                    candidates.append((i, next(iter(relations)), j))
    if not candidates:
        return Requirements(groups)
    i, relation, j = rng.choice(candidates)
    rest = [g for k, g in enumerate(groups) if k not in (i, j)]
    return Requirements((groups[i], groups[j], *rest), (RelationRequirement(0, relation, 1),))


def _natural(objects, rng: random.Random) -> str:
    # How much to say about each shape's objects: just the shape, or with colour and/or size.
    detail = {s: rng.choice(((), ("colour",), ("size",), ("size", "colour"))) for s in SHAPES}
    groups = list(_groups(objects, lambda shape: detail[shape]))
    # "one red circle" (exactly one) instead of "a red circle" now and then: both are true.
    groups = [replace(g, exact=True) if g.count == 1 and rng.random() < 0.3 else g for g in groups]
    rng.shuffle(groups)
    absent = [s for s in SHAPES if all(o.shape != s for o in objects)]
    if absent and rng.random() < 0.3:
        groups.append(CountRequirement(ObjectQuery(rng.choice(absent)), 0, exact=True))
    phrasing = replace(_Phrasing.random(rng), capitalise=rng.random() < 0.5)
    return _render(Requirements(tuple(groups)), phrasing)
