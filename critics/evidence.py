"""LookBack's evidence read by rule: does a visual answer contradict the step it checks?

LookBack (VISCO) gives the answers to its visual questions to the VLM's critique and trusts the
critique to read them. A weak VLM may not: the world VLM's critique mostly ignores them, though
they are mostly right (its model card; ``benchmarks/results/lookback_evidence_rules_val.md``).
TIFA and DSG judge an image the other way round: they compare each VQA answer with the answer
the text implies, by string match. :func:`contradiction` does that for one LookBack bullet, and
:func:`check_verdict` marks every step that a bullet contradicts as incorrect, and the final
answer when LookBack asked the chain's own question and the image's answer contradicts it.

A bullet ``* Step i: question - answer`` contradicts step i when:

=========================== ====================================================================
the answer is               and the step
=========================== ====================================================================
no / none / nothing         affirms (has no negation: "no", "not", "none", "never", "n't")
yes                         denies (has a negation)
a number                    states numbers (digits or one..ten, outside its boxes), not that one
a few words (at most four)  shares none of the answer's content words (stop words dropped,
                            plurals made singular): "yellow" vs "It is orange.", "right of" vs
                            "The A is left of the B."
=========================== ====================================================================

Anything else (boxes, long answers, "N/A", empty) is not read. Boxes are not compared: the world
VLM's boxes for a phrase miss objects and drift, so a box that differs is weak evidence that a
step is wrong (compared too, they flag many right steps: precision 0.45-0.51 on val, the
benchmark above).

The rules are English and literal: they catch a step that says the opposite of what the image
answered, not a subtle error, and they assume the questions check the step they are listed under
(LookBack's scheduling asks for that). They add no model call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from selfcorrect.critics.verdicts import StepVerdict

MAX_WORDS = 4  # the longest answer read as "a few words"

# Small closed-class words that say nothing about the image: left out when matching words.
STOP_WORDS = frozenset(
    "a an the of is are was were be there it its this that these those and or to in on at by with "
    "as for from every each any all so".split()
)
NUMBER_WORDS = {
    w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())
}
_NEGATION = re.compile(r"\b(?:no|not|none|never|nothing|nowhere)\b|n't\b", re.IGNORECASE)
_NEGATIVE_ANSWERS = frozenset({"no", "none", "nothing", "nowhere"})
_UNREAD = frozenset({"", "n/a", "na", "unknown", "unanswerable"})
_BOXES = re.compile(r"\[\s*-?\d[\d.,\s\-]*\]")  # [x0, y0, x1, y1], also out of range
_WORD = re.compile(r"[a-z]+|\d+")


def content_words(text: str) -> set[str]:
    """Lower-case words of ``text`` without stop words and boxes, plurals made singular
    ("crosses" -> "cross", "circles" -> "circle"), number words as digits."""
    words = set()
    for word in _WORD.findall(_BOXES.sub(" ", text.lower())):
        if word in STOP_WORDS:
            continue
        if word.endswith("sses"):
            word = word[:-2]
        elif word.endswith("s") and not word.endswith("ss") and len(word) > 3:
            word = word[:-1]
        words.add(NUMBER_WORDS.get(word, word))
    return words


def contradiction(step: str, question: str, answer: str) -> str | None:
    """Why ``answer`` (to ``question``, asked to check ``step``) contradicts the step, or None.

    >>> contradiction("So there is no red square.", "Is there a red square?", "Yes")
    "asked 'Is there a red square?', the image says 'Yes'"
    >>> contradiction("So there are 2 squares.", "How many squares are there?", "2") is None
    True
    """
    said = " ".join(answer.split()).strip(" .!")
    key = said.lower()
    if key in _UNREAD or _BOXES.search(said):
        return None
    first = key.split()[0].strip(",")
    denies = _NEGATION.search(_BOXES.sub(" ", step)) is not None
    if first in _NEGATIVE_ANSWERS:
        conflict = not denies
    elif first == "yes":
        conflict = denies
    elif key.isdigit() or key in NUMBER_WORDS:
        stated = {w for w in content_words(step) if w.isdigit()}
        conflict = bool(stated) and NUMBER_WORDS.get(key, key) not in stated
    elif len(key.split()) <= MAX_WORDS:
        words = content_words(said)
        conflict = bool(words) and not words & content_words(step)
    else:
        return None
    return f"asked {question.strip()!r}, the image says {said!r}" if conflict else None


@dataclass
class EvidenceCheck:
    """What the evidence contradicts, and the verdict it makes.

    Attributes:
        verdict: the critique's verdict with every contradicted step, and the final answer when
            contradicted, judged incorrect.
        steps: per step, the first contradiction found, or None.
        answer: how the answer to the chain's own question contradicts its final answer, or None.
    """

    verdict: StepVerdict
    steps: list[str | None]
    answer: str | None = None


def _same_question(a: str, b: str) -> bool:
    return " ".join(a.lower().split()).rstrip(" ?.") == " ".join(b.lower().split()).rstrip(" ?.")


def check_verdict(
    verdict: StepVerdict,
    steps: Sequence[str],
    questions: Sequence[Sequence[str]],
    answers: Sequence[Sequence[str]],
    *,
    question: str | None = None,
    answer: str | None = None,
) -> EvidenceCheck:
    """``verdict`` with every step an answer contradicts judged incorrect.

    Args:
        verdict: the critique's verdict on the ``n`` steps.
        steps: the ``n`` step texts.
        questions: per step, the visual questions that check it.
        answers: per step, the answers to them.
        question, answer: the chain's question and final answer. When a visual question *is*
            the chain's question (the last step's check often is: "How many squares are
            there?"), its answer is matched against the final answer the same way.

    Returns:
        An :class:`EvidenceCheck`. Its verdict is a new one (``unparsed`` and ``raw`` as given);
        a contradicted step is incorrect, its explanation the critique's (when it found the step
        wrong too) or the contradiction, and its P(correct), in log-prob mode, 0; a contradicted
        final answer is incorrect.
    """
    if not len(steps) == len(verdict.steps) == len(questions) == len(answers):
        raise ValueError(
            f"{len(steps)} steps, {len(verdict.steps)} judged, evidence for {len(questions)} / {len(answers)}"
        )
    reasons = []
    for step, asked, told in zip(steps, questions, answers):
        found = (contradiction(step, q, a) for q, a in zip(asked, told))
        reasons.append(next((why for why in found if why), None))
    answer_reason = None
    if question is not None and answer is not None:
        own = (
            contradiction(answer, q, a)
            for asked, told in zip(questions, answers)
            for q, a in zip(asked, told)
            if _same_question(q, question)
        )
        answer_reason = next((why for why in own if why), None)
    judged = [False if why else ok for ok, why in zip(verdict.steps, reasons)]
    explanations = [  # the critique's own explanation when it found the step wrong too
        why if why and not (ok is False and e) else e
        for ok, e, why in zip(verdict.steps, verdict.explanations, reasons)
    ]
    probabilities = verdict.step_probabilities
    if probabilities is not None:
        probabilities = [0.0 if why else p for p, why in zip(probabilities, reasons)]
    checked = replace(
        verdict,
        steps=judged,
        explanations=explanations,
        answer_correct=False if answer_reason else verdict.answer_correct,
        step_probabilities=probabilities,
        critic=f"{verdict.critic}:checked" if verdict.critic else "checked",
    )
    return EvidenceCheck(checked, reasons, answer_reason)
