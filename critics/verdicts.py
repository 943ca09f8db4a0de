"""The result types every critic returns: one family for images, pairs, reasoning steps and tokens.

A verdict is plain data (dataclasses) with :meth:`to_dict` for JSON. Three rules hold for all of
them (DESIGN.md, "critics"):

* **Scores are in [0, 1]**, whatever the critic's native range (LLaVA-Critic's 0-100, CLIPScore's
  0-2.5, a probability of "Yes"); each critic documents its mapping.
* **A verdict that cannot be read is unparsed, never 0.** When a model's free text has no verdict
  in any known format, the result has ``unparsed=True``, ``score=None`` (or ``preference=None``)
  and keeps the ``raw`` text, so that nothing downstream mistakes a format failure for a bad
  image (LLaVA-Critic's reference parser returns 0 there and so poisons preference pairs).
* **Findings say what failed and, when known, where**: one :class:`Finding` per requirement of
  the prompt, with a box in normalised ``(x0, y0, x1, y1)`` image coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Box = tuple[float, float, float, float]  # normalised x0, y0, x1, y1 (fractions of width / height)


def enclosing(boxes) -> Box | None:
    """The smallest box holding all of ``boxes``; None for no boxes."""
    if not boxes:
        return None
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


PREFERENCES = ("first", "second", "tie")


def _check_unit(value: float | None, what: str) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value}")


@dataclass
class Finding:
    """The verdict on one requirement of a prompt (``"exactly two red circles"``).

    Attributes:
        requirement: the requirement in words.
        passed: whether the critic believes it holds.
        score: the critic's confidence that it holds, in [0, 1].
        box: where in the image the finding is about (normalised ``x0, y0, x1, y1``), or None.
        explanation: why, in words (e.g. the questions asked and the answers' probabilities).
    """

    requirement: str
    passed: bool
    score: float
    box: Box | None = None
    explanation: str = ""

    def __post_init__(self) -> None:
        _check_unit(self.score, "a finding's score")

    def to_dict(self) -> dict:
        return {
            "requirement": self.requirement,
            "passed": self.passed,
            "score": self.score,
            "box": list(self.box) if self.box is not None else None,
            "explanation": self.explanation,
        }


@dataclass
class ImageVerdict:
    """How well one image (or one answer about an image) matches what was asked.

    Attributes:
        score: in [0, 1] (1 = matches completely), or None when ``unparsed``.
        passed: whether the critic accepts it (score at or above the critic's threshold), or None
            when ``unparsed``.
        findings: per-requirement verdicts (empty for critics that judge the whole only).
        explanation: the reasons, in words.
        unparsed: the model's text had no verdict in any known format; ``score`` is then None.
        raw: the model's text, for generated verdicts ("" for log-prob and embedding critics).
        critic: the name of the critic that made it.
        details: critic-specific extras (score distribution, questions asked, mode), JSON-ready.
    """

    score: float | None
    passed: bool | None
    findings: list[Finding] = field(default_factory=list)
    explanation: str = ""
    unparsed: bool = False
    raw: str = ""
    critic: str = ""
    details: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_unit(self.score, "an image verdict's score")
        if self.unparsed and (self.score is not None or self.passed is not None):
            raise ValueError("an unparsed verdict has no score and no pass/fail")
        if not self.unparsed and self.score is None:
            raise ValueError("a parsed verdict needs a score; use unparsed=True when there is none")

    @classmethod
    def unparsable(cls, raw: str, critic: str = "", details: dict | None = None) -> ImageVerdict:
        """The verdict for a model output with no readable score."""
        return cls(
            score=None,
            passed=None,
            explanation="no verdict could be read from the model's output",
            unparsed=True,
            raw=raw,
            critic=critic,
            details=details or {},
        )

    @property
    def failed_findings(self) -> list[Finding]:
        return [f for f in self.findings if not f.passed]

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "passed": self.passed,
            "findings": [f.to_dict() for f in self.findings],
            "explanation": self.explanation,
            "unparsed": self.unparsed,
            "raw": self.raw,
            "critic": self.critic,
            "details": self.details,
        }


@dataclass
class PairwiseVerdict:
    """Which of two candidates (images, or answers to one question) is better.

    ``first`` and ``second`` refer to the order the caller passed them in, whatever order the
    critic showed them to the model: critics score both orders and combine them, which cancels the
    model's position bias.

    Attributes:
        preference: ``"first"``, ``"second"``, ``"tie"``, or None when ``unparsed``.
        confidence: the combined probability of ``preference`` in [0, 1] (log-prob critics), or the
            share of orders that agree with it (generating critics); None when unparsed.
        both_orders_agree: whether the verdict on (first, second) and the verdict on the swapped
            pair name the same winner (None when an order could not be read).
        probabilities: combined ``{"first": p, "second": p, "tie": p}`` (log-prob critics), or None.
        explanation: the reasons, in words.
        unparsed: an order's text could not be read, so no position-fair verdict exists.
        raw: the model's texts for the two orders (generating critics).
        critic: the name of the critic that made it.
    """

    preference: str | None
    confidence: float | None
    both_orders_agree: bool | None
    probabilities: dict[str, float] | None = None
    explanation: str = ""
    unparsed: bool = False
    raw: tuple[str, ...] = ()
    critic: str = ""

    def __post_init__(self) -> None:
        if self.preference is not None and self.preference not in PREFERENCES:
            raise ValueError(f"preference must be one of {PREFERENCES} or None, got {self.preference!r}")
        _check_unit(self.confidence, "a pairwise confidence")
        if self.unparsed != (self.preference is None):
            raise ValueError("a pairwise verdict has a preference exactly when it was parsed")

    def to_dict(self) -> dict:
        return {
            "preference": self.preference,
            "confidence": self.confidence,
            "both_orders_agree": self.both_orders_agree,
            "probabilities": self.probabilities,
            "explanation": self.explanation,
            "unparsed": self.unparsed,
            "raw": list(self.raw),
            "critic": self.critic,
        }


@dataclass
class StepVerdict:
    """VISCO-style verdict on a reasoning chain: each step, then the final answer.

    Attributes:
        steps: per step, True (correct) / False (incorrect) / None (the critic said nothing).
        explanations: per step, why it is incorrect ("" for correct steps).
        answer_correct: whether the final answer is correct, or None when unparsed.
        step_probabilities: per step P(correct) from a log-prob critic, or None.
        unparsed: the critic's text could not be read (VISCO's ``format_error``).
        raw: the model's text.
        critic: the name of the critic that made it.
    """

    steps: list[bool | None]
    explanations: list[str]
    answer_correct: bool | None
    step_probabilities: list[float] | None = None
    unparsed: bool = False
    raw: str = ""
    critic: str = ""

    def __post_init__(self) -> None:
        if len(self.explanations) != len(self.steps):
            raise ValueError("one explanation per step")
        for p in self.step_probabilities or ():
            _check_unit(p, "a step probability")

    @property
    def first_error(self) -> int | None:
        """Index of the first step judged incorrect, or None."""
        return next((i for i, ok in enumerate(self.steps) if ok is False), None)

    def to_dict(self) -> dict:
        return {
            "steps": [{"correct": ok, "explanation": why} for ok, why in zip(self.steps, self.explanations)],
            "answer_correct": self.answer_correct,
            "step_probabilities": self.step_probabilities,
            "unparsed": self.unparsed,
            "raw": self.raw,
            "critic": self.critic,
        }


@dataclass
class TokenVerdict:
    """TLDR-style per-token rewards on a response.

    Attributes:
        tokens: the response's tokens as text pieces.
        rewards: per token P(token is correct) in [0, 1].
        threshold: a token is flagged when its reward is below this.
        spans: flagged character spans ``(start, end)`` of the response text (consecutive flagged
            tokens merged).
        critic: the name of the critic that made it.
    """

    tokens: list[str]
    rewards: list[float]
    threshold: float = 0.5
    spans: list[tuple[int, int]] = field(default_factory=list)
    critic: str = ""

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.rewards):
            raise ValueError("one reward per token")
        for r in self.rewards:
            _check_unit(r, "a token reward")

    @property
    def flagged(self) -> list[int]:
        """Indices of the tokens whose reward is below the threshold."""
        return [i for i, r in enumerate(self.rewards) if r < self.threshold]

    @property
    def response_correct(self) -> bool:
        """TLDR's response label: correct only if no token is flagged."""
        return not self.flagged

    def to_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "rewards": self.rewards,
            "threshold": self.threshold,
            "flagged": self.flagged,
            "spans": [list(s) for s in self.spans],
            "critic": self.critic,
        }
