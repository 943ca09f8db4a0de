"""LLaVA-Critic (Xiong et al. 2024) on any VLM: pointwise scores and position-fair pairwise verdicts.

The critic sends the prompts of :mod:`selfcorrect.critics.prompts` (LLaVA-Critic's own for answers,
our adaptation for generated images) and reads the verdict in one of two ways:

* ``mode="logprob"`` (the default, the fast path): **one forward pass, no decoding.** Pointwise,
  :meth:`VLM.score <selfcorrect.vision.vlm.VLM.score>` gives the log-probability of each candidate
  verdict line ``Final Score: 0``, ``Final Score: 10``, ..., ``Final Score: 100`` (each followed by
  ``score_suffix``, a newline, so that ``Final Score: 10`` does not also count the start of
  ``Final Score: 100``); a softmax over the candidates gives a distribution over scores and the
  verdict's score is its expectation, ``sum(p_s * s) / 100``. Pairwise, the candidates are
  ``The better ...: first``, ``... second`` and the tie sentence.
* ``mode="generate"``: greedy decoding of the whole critique, then a strict parse
  (:mod:`selfcorrect.critics.parsing`); text with no readable verdict gives an **unparsed**
  verdict (score None), never a score of 0. Slower; the rationale comes with it.

**Pairwise verdicts are position-fair.** Every comparison is asked in both orders, (A, B) and
(B, A). In log-prob mode the two distributions are averaged after mapping them back to the caller's
order: ``P(A) = (P_AB(first) + P_BA(second)) / 2``, likewise ``P(B)``, and ``P(tie)`` is the mean
tie probability. In generate mode each order's parsed verdict counts as a one-hot distribution and
they are averaged the same way, so two orders that disagree make a tie. The preference is the most
probable outcome (an exact first/second draw is a tie), its probability is the confidence, and
``both_orders_agree`` says whether the two orders named the same winner.

**Preference pairs** (:func:`preference_pair`, :meth:`LlavaCritic.rank_answers`,
:meth:`LlavaCritic.rank_images`) follow LLaVA-Critic's DPO recipe: K candidates, all K(K-1)
ordered comparisons, rewards ``r_i = sum_k a_ki - sum_l a_il``, best vs worst.

Example::

    critic = LlavaCritic(VLM.from_pretrained("world"))
    verdict = critic.critique(image, "two red circles and a blue square")
    verdict.score                       # 0.83: the expected score / 100
    critic.compare(image_a, image_b, "a red circle above a green triangle").preference   # "first"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from selfcorrect.critics import prompts as P
from selfcorrect.critics.parsing import FIRST, SECOND, TIE, parse_preference, parse_score
from selfcorrect.critics.verdicts import ImageVerdict, PairwiseVerdict

MODES = ("logprob", "generate")
SCORE_VALUES: tuple[int, ...] = tuple(range(0, 101, 10))  # the candidate scores in log-prob mode
DEFAULT_THRESHOLD = 0.8  # a score at or above this passes
OUTCOMES = (FIRST, SECOND, TIE)


@dataclass
class PreferencePair:
    """The result of LLaVA-Critic's ranking recipe over K candidates.

    Attributes:
        chosen: index of the candidate with the highest reward, or None when no pair can be made
            (fewer than two candidates have a reward, or all rewards are equal).
        rejected: index of the candidate with the lowest reward, or None likewise.
        rewards: per candidate ``r_i`` (None when none of its comparisons could be read).
        margins: the matrix ``a[i][j]`` the rewards came from (None on the diagonal and for
            comparisons that could not be read).
        unparsed: how many ordered comparisons could not be read.
    """

    chosen: int | None
    rejected: int | None
    rewards: list[float | None]
    margins: list[list[float | None]]
    unparsed: int = 0

    def to_dict(self) -> dict:
        return {
            "chosen": self.chosen,
            "rejected": self.rejected,
            "rewards": self.rewards,
            "margins": self.margins,
            "unparsed": self.unparsed,
        }


def comparison_margin(probabilities: Sequence[float] | None) -> float | None:
    """``a_ij`` from one ordered comparison that showed candidate i first and j second.

    LLaVA-Critic does not publish how it turns a verdict into ``a_ij`` (notes/anchor-critics.md).
    Our choice: ``a_ij = P(second better) - P(first better)``, the signed margin by which the
    *second-shown* candidate j beats i, in [-1, 1]; a tie counts 0. With this sign the recipe's
    ``r_i = sum_k a_ki - sum_l a_il`` is i's net margin over all 2(K-1) comparisons it takes part
    in, half of them shown second (``a_ki``) and half shown first (``-a_il``), so position bias
    cancels. A one-hot verdict (generate mode) gives +1, -1 or 0.

    Args:
        probabilities: ``(P(first), P(second), P(tie))`` in the shown order, or None (unparsed).

    Returns:
        The margin, or None when the comparison could not be read.
    """
    if probabilities is None:
        return None
    p_first, p_second = float(probabilities[0]), float(probabilities[1])
    return p_second - p_first


def preference_pair(margins: Sequence[Sequence[float | None]]) -> PreferencePair:
    """Rewards and the best-vs-worst pair from a K x K matrix of ordered-comparison margins.

    ``r_i = sum_k a_ki - sum_l a_il`` (LLaVA-Critic's recipe; ``a_ij`` as defined by
    :func:`comparison_margin`). Comparisons that could not be read (None) carry no information:
    a candidate's sum is taken over its readable comparisons and rescaled to all 2(K-1) of them,
    so a missing comparison neither rewards nor punishes it (with none missing this is the plain
    sum). The diagonal is ignored.

    Args:
        margins: ``margins[i][j]`` = ``a_ij`` for the comparison that showed i first and j second.

    Returns:
        A :class:`PreferencePair`; ``chosen`` is the highest reward, ``rejected`` the lowest
        (the earliest index wins a draw), both None when fewer than two candidates have a reward
        or all rewards are equal.
    """
    k = len(margins)
    if any(len(row) != k for row in margins):
        raise ValueError("margins must be a square K x K matrix")
    a = [[None if i == j else margins[i][j] for j in range(k)] for i in range(k)]
    unparsed = sum(a[i][j] is None for i in range(k) for j in range(k) if i != j)
    rewards: list[float | None] = []
    for i in range(k):
        terms = [a[j][i] for j in range(k) if j != i and a[j][i] is not None]  # i shown second
        terms += [-a[i][j] for j in range(k) if j != i and a[i][j] is not None]  # i shown first
        rewards.append(sum(terms) * 2 * (k - 1) / len(terms) if terms else None)
    known = [i for i, r in enumerate(rewards) if r is not None]
    if len(known) < 2 or len({rewards[i] for i in known}) == 1:
        return PreferencePair(None, None, rewards, a, unparsed)
    chosen = max(known, key=lambda i: (rewards[i], -i))
    rejected = min(known, key=lambda i: (rewards[i], i))
    return PreferencePair(chosen, rejected, rewards, a, unparsed)


class LlavaCritic:
    """LLaVA-Critic's judgements (pointwise and pairwise) through any :class:`VLM`.

    Args:
        vlm: a :class:`selfcorrect.vision.vlm.VLM` (LLaVA-Critic, LLaVA-OneVision, Qwen2-VL, the
            world VLM, ...), or anything with its ``score`` and ``chat`` methods.
        mode: ``"logprob"`` (one forward pass per batch, expected score) or ``"generate"`` (decode
            the critique, parse it strictly).
        threshold: a verdict passes when its score (in [0, 1]) is at least this.
        score_values: the candidate scores (0-100) compared in log-prob mode.
        score_suffix: text after each candidate score, the end of the verdict line; ``"\\n"``
            keeps ``Final Score: 10`` from also counting the start of ``Final Score: 100``.
        max_new_tokens: the longest critique generated (generate mode).
        batch_size: prompts per forward pass.
    """

    kinds = frozenset({"image", "pairwise", "answer", "answer_pair"})
    name = "llava_critic"

    def __init__(
        self,
        vlm,
        mode: str = "logprob",
        *,
        threshold: float = DEFAULT_THRESHOLD,
        score_values: Sequence[int] = SCORE_VALUES,
        score_suffix: str = "\n",
        max_new_tokens: int = 256,
        batch_size: int = 8,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        values = [int(v) for v in score_values]
        if len(values) < 2 or len(set(values)) != len(values) or not all(0 <= v <= 100 for v in values):
            raise ValueError("score_values must be at least two distinct scores in 0..100")
        self.vlm = vlm
        self.mode = mode
        self.threshold = threshold
        self.score_values = tuple(values)
        self.score_suffix = score_suffix
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"LlavaCritic({self.vlm!r}, mode={self.mode!r})"

    # ------------------------------------------------------------------------------- pointwise

    def critique(self, image, prompt: str) -> ImageVerdict:
        """How well a generated ``image`` matches its text ``prompt`` (``IMAGE_POINTWISE``)."""
        return self.critique_many([image], [prompt])[0]

    def critique_many(self, images: Sequence, prompts: Sequence[str]) -> list[ImageVerdict]:
        """:meth:`critique` for B (image, prompt) pairs in one batched call."""
        _same_length(images, prompts)
        asked = [P.IMAGE_POINTWISE.format(prompt=p) for p in prompts]
        return self._pointwise(list(images), asked)

    def critique_answer(self, image, question: str, response: str) -> ImageVerdict:
        """How good ``response`` is as an answer to ``question`` about ``image``
        (LLaVA-Critic's pointwise prompt, verbatim)."""
        return self.critique_answers([image], [question], [response])[0]

    def critique_answers(
        self, images: Sequence, questions: Sequence[str], responses: Sequence[str]
    ) -> list[ImageVerdict]:
        """:meth:`critique_answer` for B items in one batched call."""
        _same_length(images, questions, responses)
        asked = [
            P.LLAVA_CRITIC_POINTWISE.format(question=q, response=r) for q, r in zip(questions, responses)
        ]
        return self._pointwise(list(images), asked)

    def _pointwise(self, images: list, asked: list[str]) -> list[ImageVerdict]:
        if self.mode == "generate":
            texts = self.vlm.chat(
                images, asked, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size
            )
            return [self._parsed_pointwise(text) for text in texts]
        candidates = [f"{P.SCORE_PREFIX}{v}{self.score_suffix}" for v in self.score_values]
        logp = self.vlm.score(images, asked, candidates, batch_size=self.batch_size)  # (B, S)
        return [self._expected_pointwise(row) for row in logp]

    def _expected_pointwise(self, logp: torch.Tensor) -> ImageVerdict:
        probs = torch.softmax(logp.float(), dim=-1)  # (S,)
        values = torch.tensor(self.score_values, dtype=probs.dtype)
        expected = float((probs * values).sum()) / 100.0
        expected = min(max(expected, 0.0), 1.0)
        best = int(probs.argmax())
        return ImageVerdict(
            score=expected,
            passed=expected >= self.threshold,
            explanation=(
                f"expected score {100 * expected:.1f}/100; most likely {self.score_values[best]} "
                f"(p={float(probs[best]):.2f})"
            ),
            critic=self.name,
            details={
                "mode": "logprob",
                "distribution": {str(v): float(p) for v, p in zip(self.score_values, probs)},
            },
        )

    def _parsed_pointwise(self, text: str) -> ImageVerdict:
        score = parse_score(text)
        if score is None:
            return ImageVerdict.unparsable(text, critic=self.name, details={"mode": "generate"})
        reasons = "\n".join(line for line in text.splitlines() if "final score" not in line.lower()).strip()
        return ImageVerdict(
            score=score / 100.0,
            passed=score / 100.0 >= self.threshold,
            explanation=reasons,
            raw=text,
            critic=self.name,
            details={"mode": "generate"},
        )

    # -------------------------------------------------------------------------------- pairwise

    def compare(self, image_a, image_b, prompt: str) -> PairwiseVerdict:
        """Which of two images generated from ``prompt`` matches it better, asked in both orders."""
        asked = P.IMAGE_PAIRWISE.format(prompt=prompt)
        return self._both_orders([[image_a, image_b], [image_b, image_a]], [asked, asked], images=True)

    def compare_answers(self, image, question: str, response_a: str, response_b: str) -> PairwiseVerdict:
        """Which of two answers to ``question`` about ``image`` is better, asked in both orders
        (LLaVA-Critic's pairwise prompt, verbatim)."""
        asked = [
            P.LLAVA_CRITIC_PAIRWISE.format(question=question, first=response_a, second=response_b),
            P.LLAVA_CRITIC_PAIRWISE.format(question=question, first=response_b, second=response_a),
        ]
        return self._both_orders([image, image], asked, images=False)

    def _both_orders(self, groups: list, asked: list[str], *, images: bool) -> PairwiseVerdict:
        (ab, ba), raw = self._ordered(groups, asked, images=images)
        if ab is None or ba is None:
            return PairwiseVerdict(
                preference=None,
                confidence=None,
                both_orders_agree=None,
                explanation="no verdict could be read from the model's output in "
                + ("either order" if ab is None and ba is None else "one order"),
                unparsed=True,
                raw=raw,
                critic=self.name,
            )
        return combine_orders(ab, ba, critic=self.name, raw=raw)

    def _ordered(self, groups: list, asked: list[str], *, images: bool):
        """Per ordered prompt ``(P(first), P(second), P(tie))`` in the shown order, or None (unparsed).

        Log-prob mode gives the softmax over the three verdict sentences; generate mode a one-hot
        from the parsed text.

        Returns:
            ``(probabilities, texts)``: one entry per prompt, and the generated texts (``()`` in
            log-prob mode).
        """
        if self.mode == "generate":
            texts = self.vlm.chat(
                groups, asked, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size
            )
            out = []
            for text in texts:
                verdict = parse_preference(text)
                out.append(None if verdict is None else tuple(float(verdict == o) for o in OUTCOMES))
            return out, tuple(texts)
        better, tie = (P.BETTER_IMAGE, P.TIE_IMAGES) if images else (P.BETTER_RESPONSE, P.TIE_RESPONSES)
        candidates = [better + P.FIRST, better + P.SECOND, tie]
        logp = self.vlm.score(groups, asked, candidates, batch_size=self.batch_size)  # (N, 3)
        probs = torch.softmax(logp.float(), dim=-1)
        return [tuple(float(p) for p in row) for row in probs], ()

    # ---------------------------------------------------------------------- preference pairs

    def rank_answers(self, image, question: str, responses: Sequence[str]) -> PreferencePair:
        """LLaVA-Critic's DPO recipe on K answers to one question about one image.

        All K(K-1) ordered comparisons go to the model in one batched call; see
        :func:`preference_pair` for the rewards and :func:`comparison_margin` for ``a_ij``.
        """
        k = len(responses)
        pairs = [(i, j) for i in range(k) for j in range(k) if i != j]
        asked = [
            P.LLAVA_CRITIC_PAIRWISE.format(question=question, first=responses[i], second=responses[j])
            for i, j in pairs
        ]
        return self._rank(k, pairs, [image] * len(pairs), asked, images=False)

    def rank_images(self, images: Sequence, prompt: str) -> PreferencePair:
        """LLaVA-Critic's DPO recipe on K images generated from one prompt (e.g. for Diffusion-DPO)."""
        k = len(images)
        pairs = [(i, j) for i in range(k) for j in range(k) if i != j]
        asked = [P.IMAGE_PAIRWISE.format(prompt=prompt)] * len(pairs)
        return self._rank(k, pairs, [[images[i], images[j]] for i, j in pairs], asked, images=True)

    def _rank(self, k: int, pairs, groups, asked, *, images: bool) -> PreferencePair:
        if k < 2:
            raise ValueError(f"ranking needs at least two candidates, got {k}")
        margins: list[list[float | None]] = [[None] * k for _ in range(k)]
        ordered, _ = self._ordered(groups, asked, images=images)
        for (i, j), probs in zip(pairs, ordered):
            margins[i][j] = comparison_margin(probs)
        return preference_pair(margins)


def combine_orders(
    ab: Sequence[float], ba: Sequence[float], *, critic: str = "", raw: tuple[str, ...] = ()
) -> PairwiseVerdict:
    """One position-fair verdict from the same comparison asked in both orders.

    Args:
        ab: ``(P(first), P(second), P(tie))`` with A shown first.
        ba: the same with B shown first.

    Returns:
        ``P(A) = (ab[0] + ba[1]) / 2``, ``P(B) = (ab[1] + ba[0]) / 2``, ``P(tie) = (ab[2] + ba[2]) / 2``;
        the preference is the most probable (``"tie"`` when P(A) = P(B) is the largest), the
        confidence its probability, and ``both_orders_agree`` whether the two orders' most probable
        outcomes name the same winner.
    """
    probabilities = {
        FIRST: (ab[0] + ba[1]) / 2,
        SECOND: (ab[1] + ba[0]) / 2,
        TIE: (ab[2] + ba[2]) / 2,
    }
    top = max(probabilities.values())
    if probabilities[FIRST] == probabilities[SECOND] == top:
        preference = TIE
    else:
        preference = max(OUTCOMES, key=lambda o: probabilities[o])  # first of the maxima
    winner_ab = OUTCOMES[max(range(3), key=lambda i: ab[i])]
    winner_ba = {FIRST: SECOND, SECOND: FIRST, TIE: TIE}[OUTCOMES[max(range(3), key=lambda i: ba[i])]]
    agree = winner_ab == winner_ba
    explanation = (
        f"P(first)={probabilities[FIRST]:.2f}, P(second)={probabilities[SECOND]:.2f}, "
        f"P(tie)={probabilities[TIE]:.2f} over both orders; shown A first the critic said {winner_ab}, "
        f"shown B first it said {winner_ba}" + ("" if agree else " (position bias: the orders disagree)")
    )
    return PairwiseVerdict(
        preference=preference,
        confidence=min(max(float(probabilities[preference]), 0.0), 1.0),
        both_orders_agree=agree,
        probabilities={o: float(p) for o, p in probabilities.items()},
        explanation=explanation,
        raw=raw,
        critic=critic,
    )


def _same_length(*sequences) -> None:
    lengths = {len(s) for s in sequences}
    if len(lengths) != 1:
        raise ValueError(f"give one of each per item; got lengths {sorted(lengths)}")
    if 0 in lengths:
        raise ValueError("nothing to critique")
