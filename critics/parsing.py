"""Strict parsers for the verdict formats VLM judges write.

LLaVA-Critic was trained on GPT-4o judgements in several dialects (notes/anchor-critics.md), and
the world VLM on the formats of :mod:`selfcorrect.critics.prompts`. Each parser here reads one
dialect and returns **None when the text holds no verdict, or contradictory ones**, never a
default such as 0: a caller turns None into an explicit unparsed verdict.

================================= ====================================== ========================
format                            example                                parser
================================= ====================================== ========================
pointwise score (0-100)           ``Final Score: 85``, ``Final Score:    :func:`parse_score`
                                  85/100``, ``**Final Score:** [7/10]``
LLaVA-Bench pair of scores (1-10) first line ``8 6`` or ``8, 6``         :func:`parse_score_pair`
MT-Bench / Arena-Hard             ``[[A>>B]]``, ``[[A>B]]``, ``[[A=B]]``, :func:`parse_mt_bench`
                                  ``[[B>A]]``, ``[[B>>A]]``, ``[[A]]``,
                                  ``[[B]]``, ``[[C]]`` (tie)
better response / image           ``The better response: [first]``,      :func:`parse_better`
                                  ``The better image: second``,
                                  ``Both responses are equally good.``
any pairwise format               all of the above pairwise ones         :func:`parse_preference`
================================= ====================================== ========================

Strictness: a score outside its range, two different scores, or two different preferences in one
text give None. Markdown emphasis (``**``) and square brackets around values are tolerated.
"""

from __future__ import annotations

import re

from selfcorrect.critics.verdicts import Box

FIRST, SECOND, TIE = "first", "second", "tie"

_NUMBER = r"(\d+(?:\.\d+)?)"
# "Final Score: 85", "Final Score: 85/100", "**Final Score:** [85]", "Final score - 8.5 / 10"
_SCORE = re.compile(
    r"final\s+score\s*\**\s*[:=\-]\s*\**\s*\[?\s*" + _NUMBER + r"\s*(?:/\s*(\d+))?\s*\]?",
    re.IGNORECASE,
)
_SCALES = (5, 10, 100)  # denominators accepted after a score ("7/10" is 70)
_PAIR_LINE = re.compile(r"^\s*" + _NUMBER + r"\s*[,\s]\s*" + _NUMBER + r"\s*$")
_MT_BENCH = re.compile(r"\[\[\s*(A\s*>>\s*B|A\s*>\s*B|A\s*=\s*B|B\s*>\s*A|B\s*>>\s*A|A\s*<\s*B|A|B|C)\s*\]\]")
_BETTER = re.compile(
    r"the\s+better\s+(?:response|image|answer|one)\s*(?:is)?\s*\**\s*:?\s*\**\s*\[?\s*"
    r"(?:the\s+)?(first|second|1st|2nd|tie|neither|both)\b(?:\s+(?:response|image|answer|one))?\s*\]?",
    re.IGNORECASE,
)
_EQUALLY = re.compile(
    r"\b(?:both|the\s+two)\s+(?:responses|images|answers)\s+are\s+equally\s+(?:good|bad|accurate|correct)",
    re.IGNORECASE,
)
_BOX = re.compile(
    r"\[\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*\]"
)


def parse_score(text: str, maximum: float = 100.0) -> float | None:
    """The ``Final Score`` in ``text`` on a 0-100 scale, or None.

    ``Final Score: N`` is read as N out of 100; ``Final Score: N/D`` with D in 5, 10 or 100 is
    rescaled to 100. Every ``Final Score`` in the text must agree (a rationale may repeat it).

    Args:
        text: the model's output.
        maximum: the largest score a bare ``N`` may have (100 for LLaVA-Critic).

    Returns:
        The score in ``[0, 100]``, or None if there is none, it is out of range, its denominator
        is unknown, or two scores differ.
    """
    if not isinstance(text, str):
        return None
    values = set()
    for match in _SCORE.finditer(text):
        value = float(match.group(1))
        scale = int(match.group(2)) if match.group(2) is not None else maximum
        if (match.group(2) is not None and scale not in _SCALES) or value > scale:
            return None
        values.add(round(value * 100.0 / scale, 6))
    return values.pop() if len(values) == 1 else None


def parse_score_pair(text: str, low: float = 1.0, high: float = 10.0) -> tuple[float, float] | None:
    """LLaVA-Bench's two scores on the first non-empty line (``"8 6"``, ``"8, 6"``), or None.

    Args:
        text: the model's output.
        low, high: the allowed range of each score (1-10 in LLaVA-Bench).
    """
    if not isinstance(text, str):
        return None
    first = next((line for line in text.splitlines() if line.strip()), "")
    match = _PAIR_LINE.match(first)
    if match is None:
        return None
    a, b = float(match.group(1)), float(match.group(2))
    if not (low <= a <= high and low <= b <= high):
        return None
    return a, b


def parse_mt_bench(text: str) -> tuple[str, bool] | None:
    """An MT-Bench / Arena-Hard verdict: ``(preference, strong)`` or None.

    ``[[A>>B]]`` is ``("first", True)``, ``[[A>B]]`` ``("first", False)``, ``[[A=B]]`` and ``[[C]]``
    ``("tie", False)``, ``[[B>A]]`` / ``[[A<B]]`` ``("second", False)``, ``[[B>>A]]``
    ``("second", True)``, ``[[A]]`` / ``[[B]]`` (MT-Bench's pairwise prompt) ``(first|second, False)``.
    Several verdicts that differ give None.
    """
    if not isinstance(text, str):
        return None
    found = set()
    for match in _MT_BENCH.finditer(text):
        token = re.sub(r"\s+", "", match.group(1))
        found.add(
            {
                "A>>B": (FIRST, True),
                "A>B": (FIRST, False),
                "A": (FIRST, False),
                "A=B": (TIE, False),
                "C": (TIE, False),
                "B>A": (SECOND, False),
                "A<B": (SECOND, False),
                "B": (SECOND, False),
                "B>>A": (SECOND, True),
            }[token]
        )
    return found.pop() if len(found) == 1 else None


def parse_better(text: str) -> str | None:
    """``The better response|image: [first|second]`` or ``Both ... are equally good``, or None.

    Returns:
        ``"first"``, ``"second"`` or ``"tie"``; None when no verdict is stated, or several verdicts
        contradict each other.
    """
    if not isinstance(text, str):
        return None
    found = set()
    for match in _BETTER.finditer(text):
        word = match.group(1).lower()
        found.add({"1st": FIRST, "2nd": SECOND, "neither": TIE, "both": TIE}.get(word, word))
    if _EQUALLY.search(text):
        found.add(TIE)
    return found.pop() if len(found) == 1 else None


def parse_preference(text: str) -> str | None:
    """A pairwise verdict in any known format (better-response, MT-Bench, LLaVA-Bench), or None.

    LLaVA-Bench's score pair counts as a verdict when its first line is exactly two scores: the
    higher one wins, equal scores tie. Formats that disagree with each other give None.
    """
    found = set()
    better = parse_better(text)
    if better is not None:
        found.add(better)
    mt = parse_mt_bench(text)
    if mt is not None:
        found.add(mt[0])
    pair = parse_score_pair(text)
    if pair is not None:
        found.add(FIRST if pair[0] > pair[1] else SECOND if pair[1] > pair[0] else TIE)
    return found.pop() if len(found) == 1 else None


def parse_boxes(text: str, scale: float = 100.0) -> list[Box]:
    """Every ``[x0, y0, x1, y1]`` in ``text``, divided by ``scale`` (100: percent of the image side).

    Boxes that are empty, inverted or outside the image are skipped.
    """
    boxes = []
    for match in _BOX.finditer(text or ""):
        x0, y0, x1, y1 = (float(v) / scale for v in match.groups())
        if 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0:
            boxes.append((x0, y0, x1, y1))
    return boxes
