"""VISCO's LookBack (Wu et al. 2024): critique a reasoning chain about an image by looking again.

A plain critique asks a VLM to judge every step of a chain at once; VISCO found that critics then
rarely check what the steps claim to *see*. LookBack revisits the image first (VISCO's
``infer_critique_lookback.py``; notes/anchor-critics.md, section b):

1. **Solve.** The same VLM answers the question afresh (:data:`~.prompts.SOLVE`): a reference
   answer, in the ``Step i: ...`` / ``Answer: ...`` format.
2. **Schedule visual queries.** For each prefix of steps 1..i the VLM lists the questions that
   check the *last* step against the image (:data:`~.prompts.VISUAL_QUERIES`), one per line, or
   ``N/A``. All prefixes go in one batched chat call.
3. **Verify.** Every distinct question is asked with the image (:data:`~.prompts.VERIFY`,
   "``{q}`` Answer briefly."), all in one batched chat call.
4. **Synthesise.** The critique prompt (:data:`~.prompts.CRITIQUE`) gets the answers as
   "Visual information" bullets ``* Step i: q - a`` (:data:`~.prompts.EVIDENCE`; VISCO's bullets
   do not name the step), and returns VISCO's JSON
   ``{"step_1": {"correctness": true, "explanation": ""}, ..., "answer_correctness": true}``.
5. **Check** (``check_evidence=True``; not in VISCO): the answers are also read by rule, as TIFA
   reads VQA answers (:mod:`~.evidence`), and a step an answer contradicts ("So there is no red
   square." / "Is there a red square? - Yes") is judged incorrect whatever the critique said;
   so is the final answer when a visual question was the chain's own and its answer differs.
   Meant for a VLM whose critique does not read its evidence, such as the world VLM (the default
   for it: :func:`selfcorrect.critics.build_lookback_critic`).

So a chain costs four calls (chat, or in log-prob mode three and one scoring call) whatever its
length (VISCO sends ``2 + n_steps + sum(q)`` single requests); each call shows the same image,
which the backend encodes once per call. There is no limit on the number of steps (VISCO's
ordinal map stopped at five).

**The reference answer.** VISCO puts the solve step's answer into the synthesis prompt, flagged
"MAY OR MAY NOT be correct". The prompts here are the ones the world VLM was trained on, and its
training critiques carry evidence bullets only: an extra line would be out of distribution for it.
So the reference goes into the prompt only with ``with_reference=True`` (for general VLMs, as in
VISCO), as :data:`~.prompts.REFERENCE` after the bullets; without it the prompt is exactly the
trained one. The reference is solved either way (``solve_first=False`` skips that call) and kept
in the :class:`LookBackTrace`.

**Parsing** follows VISCO's ``format_response``: the last ```` ```json ```` block, else the whole
text, else the outermost ``{...}``; keys lowercased; ``"yes"`` / ``"correct"`` / ``"true"``
(and their negatives) coerced to booleans. Anything missing or malformed (a step without
``correctness`` or ``explanation``, no ``answer_correctness``) gives an **unparsed**
:class:`~.verdicts.StepVerdict` with no judgement at all, never "all correct".

**Log-prob mode** (``mode="logprob"``; VISCO generates): the synthesis (and the plain critique)
is read instead of written. For each step the verdict JSON is given up to that step's
``"correctness": `` (the earlier steps judged correct, as in the trained format), and the VLM
scores ``true`` against ``false`` there; one more slot does ``"answer_correctness": ``. One
:meth:`~selfcorrect.vision.vlm.VLM.score` call, no decoding; the verdict carries every step's
P(correct) (``step_probabilities``), and a step is incorrect when it is below ``threshold``.
Explanations are empty in this mode.

**Correction** (:meth:`LookBackCritic.correct`) is VISCO's correction prompt in setting ASE (each
step followed by ``- Critique: correct.`` or ``incorrect. Explanation: ...``), asking for SOLVE's
format. It is for general VLMs: the world VLM was not trained on it, and when a reply has no
``Answer:`` line the critic falls back to a fresh SOLVE (``Correction.fallback``). Pass
``correction="solve"`` to go straight to the fresh solve.

Example::

    critic = LookBackCritic(VLM.from_pretrained("world"))
    verdict = critic.critique_steps(image, "How many red circles are there?",
                                    "Step 1: There is a red circle at [10, 10, 30, 30].\\n"
                                    "Step 2: So there is 1 red circle.\\nAnswer: 1")
    verdict.first_error                  # index of the first step judged wrong, or None
    fixed = critic.correct(image, question, steps, answer, verdict).solution.answer
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from selfcorrect.critics import prompts as P
from selfcorrect.critics.evidence import check_verdict
from selfcorrect.critics.verdicts import StepVerdict

DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_ANSWER_TOKENS = 32
DEFAULT_MAX_QUESTIONS = 4
SETTINGS = ("A", "AS", "ASE")  # VISCO's correction settings: answer / + step labels / + explanations
CORRECTIONS = ("critique", "solve")
MODES = ("generate", "logprob")  # how the critique is made: decoded and parsed, or scored

_STEP = re.compile(r"^\s*\**\s*step\s*(\d+)\s*\**\s*[:.)\-]\s*\**\s*(.*)$", re.IGNORECASE)
_ANSWER = re.compile(r"^\s*\**\s*(?:final\s+)?answer\s*\**\s*[:\-]\s*\**\s*(.*?)\s*\**\s*$", re.IGNORECASE)
_ENUMERATION = re.compile(r"^\s*(?:\d+\s*[.)]|[-*\u2022])\s*")
_TRUE = frozenset({"true", "yes", "correct"})
_FALSE = frozenset({"false", "no", "incorrect"})


# ------------------------------------------------------------------------------ result types


@dataclass
class Solution:
    """A step-by-step answer as a VLM wrote it (SOLVE's format).

    Attributes:
        steps: the ``Step i:`` texts, in order.
        answer: the ``Answer:`` text, or None when there was none.
        raw: the model's text.
    """

    steps: list[str]
    answer: str | None
    raw: str = ""

    @property
    def parsed(self) -> bool:
        return self.answer is not None

    def text(self) -> str:
        lines = [f"Step {i + 1}: {s}" for i, s in enumerate(self.steps)]
        return "\n".join([*lines, f"Answer: {self.answer}"] if self.answer is not None else lines)

    def to_dict(self) -> dict:
        return {"steps": self.steps, "answer": self.answer, "raw": self.raw}


@dataclass
class LookBackTrace:
    """Everything one LookBack critique asked and was told.

    Attributes:
        verdict: the per-step verdict.
        reference: the independent solve (None with ``solve_first=False``).
        questions: per step, the visual questions that check it (``[]`` for N/A).
        answers: per step, the VLM's brief answer to each of its questions.
        prompt: the synthesis prompt sent.
        contradictions: per step, how an answer contradicts it (:mod:`~.evidence`), or None;
            all None unless the critic checks its evidence.
        answer_contradiction: how the answer to the chain's own question, when asked,
            contradicts the final answer, or None.
    """

    verdict: StepVerdict
    reference: Solution | None
    questions: list[list[str]]
    answers: list[list[str]]
    prompt: str = ""
    contradictions: list[str | None] = field(default_factory=list)
    answer_contradiction: str | None = None

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict.to_dict(),
            "reference": None if self.reference is None else self.reference.to_dict(),
            "evidence": [
                [{"question": q, "answer": a} for q, a in zip(qs, ans)]
                for qs, ans in zip(self.questions, self.answers)
            ],
            "prompt": self.prompt,
            "contradictions": self.contradictions,
            "answer_contradiction": self.answer_contradiction,
        }


@dataclass
class Correction:
    """The chain after a correction step.

    Attributes:
        solution: the corrected chain (the given one when nothing was asked).
        asked: whether the VLM was asked at all (not when the critique found nothing wrong, or
            could not be read).
        fallback: the correction reply had no ``Answer:`` line (or ``correction="solve"``), so the
            solution is a fresh SOLVE.
        prompts: the prompts sent, in order.
        reason: why nothing was asked, or "".
    """

    solution: Solution
    asked: bool
    fallback: bool = False
    prompts: list[str] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict:
        return {
            "solution": self.solution.to_dict(),
            "asked": self.asked,
            "fallback": self.fallback,
            "prompts": self.prompts,
            "reason": self.reason,
        }


# ----------------------------------------------------------------------------------- parsing


def parse_solution(text: str) -> Solution:
    """``Step i: ...`` lines and the last ``Answer: ...`` line of ``text``.

    Lines that follow a step without a marker continue it; text before the first step is ignored.
    """
    steps: list[str] = []
    answer = None
    current = None  # "step" while inside a step, so continuation lines join it
    for line in (text or "").splitlines():
        if m := _STEP.match(line):
            steps.append(m.group(2).strip())
            current = "step"
        elif m := _ANSWER.match(line):
            answer = m.group(1).strip()
            current = None
        elif current == "step" and line.strip():
            steps[-1] = f"{steps[-1]} {line.strip()}".strip()
    return Solution(steps, answer, text or "")


def as_chain(steps: str | Sequence[str], answer: str | None = None) -> tuple[list[str], str]:
    """A chain given as a list of step texts or a ``Step 1: ...`` text, and its answer.

    A text without ``Step i:`` lines is one step. Without ``answer``, the text's ``Answer:`` line
    is the answer, else its last step.

    Raises:
        ValueError: no steps, an empty step, or no answer.
    """
    if isinstance(steps, str):
        solution = parse_solution(steps)
        chain = solution.steps
        if not chain:
            chain = [" ".join(steps.split())] if steps.strip() else []
        if answer is None:
            answer = solution.answer if solution.answer is not None else (chain[-1] if chain else None)
    else:
        chain = [" ".join(str(s).split()) for s in steps]
    if not chain or any(not s for s in chain):
        raise ValueError("a reasoning chain needs at least one step, and no step may be empty")
    if answer is None or not str(answer).strip():
        raise ValueError("the chain has no final answer")
    return chain, " ".join(str(answer).split())


def parse_queries(text: str, max_questions: int = DEFAULT_MAX_QUESTIONS) -> list[str]:
    """The visual questions in a VISUAL_QUERIES reply: one per line, enumeration marks removed;
    ``N/A`` (alone, or as the whole reply) means none. At most ``max_questions``, no repeats."""
    questions: list[str] = []
    for line in (text or "").splitlines():
        line = _ENUMERATION.sub("", line).strip()
        if not line or line.upper().rstrip(".") == P.NOT_APPLICABLE:
            continue
        if line not in questions:
            questions.append(line)
    return questions[:max_questions]


def _load_json(text: str) -> dict | None:
    text = text.replace("\\_", "_")  # as VISCO: models escape underscores in keys
    candidates = []
    if "```json" in text.lower():
        block = re.split(r"```json", text, flags=re.IGNORECASE)[-1]
        candidates.append(block.split("```")[0])
    candidates.append(text.strip())
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(value, dict):
            return value
    return None


def _lower_keys(value):
    if isinstance(value, dict):
        return {str(k).strip().lower(): _lower_keys(v) for k, v in value.items()}
    return value


def _as_bool(value) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower().rstrip(".")
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return None


def parse_step_verdict(text: str, n_steps: int, critic: str = "") -> StepVerdict:
    """VISCO's critique JSON for a chain of ``n_steps`` steps, read as VISCO does.

    Returns:
        A :class:`StepVerdict`; when the JSON is missing, malformed, or lacks ``answer_correctness``
        or any step's ``correctness`` / ``explanation``, an unparsed one (every judgement None).
    """
    unparsed = StepVerdict(
        [None] * n_steps, [""] * n_steps, None, unparsed=True, raw=text or "", critic=critic
    )
    if not isinstance(text, str):
        return unparsed
    data = _load_json(text)
    if data is None:
        return unparsed
    data = _lower_keys(data)
    answer = data.get("answer_correctness")
    if isinstance(answer, dict):
        answer = answer.get("correctness")
    answer_correct = _as_bool(answer)
    if answer_correct is None:
        return unparsed
    steps, explanations = [], []
    for i in range(n_steps):
        entry = data.get(f"step_{i + 1}")
        if not isinstance(entry, dict) or "explanation" not in entry:
            return unparsed
        ok = _as_bool(entry.get("correctness"))
        if ok is None:
            return unparsed
        steps.append(ok)
        explanations.append("" if entry["explanation"] is None else str(entry["explanation"]))
    return StepVerdict(steps, explanations, answer_correct, raw=text, critic=critic)


def verdict_slots(n_steps: int) -> list[str]:
    """The verdict JSON up to each judgement, for log-prob mode: ``n_steps + 1`` texts.

    Text ``k`` (0-based) ends at step ``k + 1``'s ``"correctness": `` with the steps before it
    judged correct; the last ends at ``"answer_correctness": `` with every step judged correct.
    Each followed by ``true`` or ``false`` is a prefix of the JSON :func:`json.dumps` writes for
    such a verdict (the world VLM's training format).
    """
    correct = [f'"step_{i + 1}": {{"correctness": true, "explanation": ""}}, ' for i in range(n_steps)]
    slots = ["{" + "".join(correct[:k]) + f'"step_{k + 1}": {{"correctness": ' for k in range(n_steps)]
    return [*slots, "{" + "".join(correct) + '"answer_correctness": ']


# ------------------------------------------------------------------------------------ critic


def _chain_text(steps: Sequence[str]) -> str:
    return "\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(steps))


def _one_line(text: str) -> str:
    return " ".join((text or "").split())


class LookBackCritic:
    """VISCO's LookBack step critic (and its plain one-shot baseline) on any :class:`VLM`.

    Args:
        vlm: a :class:`selfcorrect.vision.vlm.VLM`, or anything with its ``chat`` method.
        max_new_tokens: the longest solve, query list or critique generated.
        answer_tokens: the longest answer to a visual question (at most ``max_new_tokens``).
        max_questions: the most visual questions kept per step (a rambling reply costs no more).
        with_reference: put the solve step's answer into the synthesis prompt (VISCO does; the
            world VLM was not trained with it, so off by default; see the module docstring).
        solve_first: run the independent solve at all (its answer is kept in the trace).
        correction: ``"critique"`` (VISCO's correction prompt, falling back to a fresh SOLVE when
            the reply has no answer) or ``"solve"`` (a fresh SOLVE straight away).
        setting: VISCO's correction setting: ``"A"`` (answer label), ``"AS"`` (+ step labels) or
            ``"ASE"`` (+ explanations).
        batch_size: conversations per ``generate`` (or ``score``) call.
        mode: ``"generate"`` (VISCO: decode the critique JSON and parse it) or ``"logprob"``
            (score ``true`` / ``false`` at each judgement; see the module docstring).
        threshold: in log-prob mode, the P(correct) below which a step or the answer is judged
            incorrect.
        check_evidence: also read the answers by rule and judge a step they contradict incorrect
            (:func:`~.evidence.check_verdict`; LookBack only, not the plain critique).
    """

    kinds = frozenset({"steps"})
    name = "lookback"

    def __init__(
        self,
        vlm,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        answer_tokens: int = DEFAULT_ANSWER_TOKENS,
        max_questions: int = DEFAULT_MAX_QUESTIONS,
        with_reference: bool = False,
        solve_first: bool = True,
        correction: str = "critique",
        setting: str = "ASE",
        batch_size: int = 8,
        mode: str = "generate",
        threshold: float = 0.5,
        check_evidence: bool = False,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if max_new_tokens < 1 or answer_tokens < 1 or max_questions < 0:
            raise ValueError("max_new_tokens and answer_tokens must be at least 1, max_questions at least 0")
        if correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
        if setting not in SETTINGS:
            raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
        if with_reference and not solve_first:
            raise ValueError("with_reference needs solve_first")
        self.vlm = vlm
        self.max_new_tokens = max_new_tokens
        self.answer_tokens = min(answer_tokens, max_new_tokens)
        self.max_questions = max_questions
        self.with_reference = with_reference
        self.solve_first = solve_first
        self.correction = correction
        self.setting = setting
        self.batch_size = batch_size
        self.mode = mode
        self.threshold = threshold
        self.check_evidence = check_evidence

    def __repr__(self) -> str:
        return (
            f"LookBackCritic({self.vlm!r}, mode={self.mode!r}, with_reference={self.with_reference}, "
            f"check_evidence={self.check_evidence})"
        )

    def _chat(self, image, prompts: list[str], max_new_tokens: int) -> list[str]:
        texts = self.vlm.chat(
            [image] * len(prompts), prompts, max_new_tokens=max_new_tokens, batch_size=self.batch_size
        )
        return [t if isinstance(t, str) else "" for t in texts]

    def judge(self, image, prompt: str, n_steps: int, critic: str = "lookback") -> StepVerdict:
        """The verdict on a filled-in critique prompt (:data:`~.prompts.CRITIQUE`, with any
        evidence) of a chain of ``n_steps`` steps: generated and parsed, or in log-prob mode scored."""
        if self.mode == "generate":
            [text] = self._chat(image, [prompt], self.max_new_tokens)
            return parse_step_verdict(text, n_steps, critic=critic)
        slots = verdict_slots(n_steps)
        logprobs = self.vlm.score(  # (n_steps + 1, 2): log p of "true", "false" at each slot
            [image] * len(slots),
            [prompt] * len(slots),
            [[slot + "true", slot + "false"] for slot in slots],
            batch_size=self.batch_size,
        )
        p_correct = logprobs.float().softmax(dim=-1)[:, 0].tolist()
        return StepVerdict(
            [p >= self.threshold for p in p_correct[:-1]],
            [""] * n_steps,
            p_correct[-1] >= self.threshold,
            step_probabilities=p_correct[:-1],
            critic=critic,
        )

    # ----------------------------------------------------------------------------- the steps

    def solve(self, image, question: str) -> Solution:
        """Step 1: a fresh step-by-step answer (SOLVE); ``answer`` is None when it had none."""
        [text] = self._chat(_image(image), [P.SOLVE.format(question=question)], self.max_new_tokens)
        return parse_solution(text)

    def visual_queries(self, image, question: str, steps: Sequence[str]) -> list[list[str]]:
        """Step 2: per step, the questions that check it against the image (one chat call)."""
        prompts = [
            P.VISUAL_QUERIES.format(question=question, steps=_chain_text(steps[: i + 1]))
            for i in range(len(steps))
        ]
        texts = self._chat(_image(image), prompts, self.max_new_tokens)
        return [parse_queries(t, self.max_questions) for t in texts]

    def verify(self, image, questions: Sequence[str]) -> list[str]:
        """Step 3: brief answers to ``questions`` (VERIFY), one chat call; each distinct question
        is asked once."""
        distinct = list(dict.fromkeys(questions))
        if not distinct:
            return []
        texts = self._chat(_image(image), [P.VERIFY.format(question=q) for q in distinct], self.answer_tokens)
        answers = dict(zip(distinct, (_one_line(t) for t in texts)))
        return [answers[q] for q in questions]

    def lookback(
        self, image, question: str, steps: str | Sequence[str], answer: str | None = None
    ) -> LookBackTrace:
        """The whole LookBack critique, with what it asked and was told.

        Args:
            image: anything :func:`~selfcorrect.vision.images.load_image` reads.
            question: the question the chain answers.
            steps: the chain's steps, a list of texts or a ``Step 1: ...`` text (see :func:`as_chain`).
            answer: the chain's final answer (default: the text's ``Answer:`` line).
        """
        image = _image(image)
        chain, answer = as_chain(steps, answer)
        question = _one_line(question)
        reference = self.solve(image, question) if self.solve_first else None  # 1 call
        questions = self.visual_queries(image, question, chain)  # 1 call
        flat = [q for qs in questions for q in qs]
        flat_answers = self.verify(image, flat)  # 1 call (none when there is no question)
        answers, start = [], 0
        for qs in questions:
            answers.append(flat_answers[start : start + len(qs)])
            start += len(qs)
        evidence = ""
        if flat:
            per_step = [list(zip(asked, told)) for asked, told in zip(questions, answers)]
            evidence = P.EVIDENCE.format(bullets=P.evidence_bullets(per_step))
        if self.with_reference:
            known = reference.answer if reference.answer is not None else _one_line(reference.raw)
            evidence += P.REFERENCE.format(answer=known or P.NOT_APPLICABLE)
        prompt = P.CRITIQUE.format(
            question=question, steps=_chain_text(chain), answer=answer, evidence=evidence
        )
        verdict = self.judge(image, prompt, len(chain), self.name)  # 1 call
        trace = LookBackTrace(verdict, reference, questions, answers, prompt, [None] * len(chain))
        if self.check_evidence:
            check = check_verdict(verdict, chain, questions, answers, question=question, answer=answer)
            trace.verdict = check.verdict
            trace.contradictions = check.steps
            trace.answer_contradiction = check.answer
        return trace

    def critique_steps(
        self, image, question: str, steps: str | Sequence[str], answer: str | None = None
    ) -> StepVerdict:
        """LookBack's verdict on each step and the final answer (see :meth:`lookback`)."""
        return self.lookback(image, question, steps, answer).verdict

    def critique_plain(
        self, image, question: str, steps: str | Sequence[str], answer: str | None = None
    ) -> StepVerdict:
        """The one-shot critique without LookBack's evidence (VISCO's baseline): one call."""
        chain, answer = as_chain(steps, answer)
        prompt = P.CRITIQUE.format(
            question=_one_line(question), steps=_chain_text(chain), answer=answer, evidence=""
        )
        return self.judge(_image(image), prompt, len(chain), f"{self.name}:plain")

    # ---------------------------------------------------------------------------- correction

    def correction_prompt(
        self, question: str, steps: Sequence[str], answer: str, verdict: StepVerdict
    ) -> str:
        """VISCO's correction prompt for ``verdict`` in this critic's ``setting``."""
        lines = []
        for i, (text, ok, why) in enumerate(zip(steps, verdict.steps, verdict.explanations)):
            lines.append(f"Step {i + 1}: {text}")
            if self.setting != "A":
                label = {True: "correct.", False: "incorrect.", None: "unknown."}[ok]
                if ok is False and self.setting == "ASE":
                    label += " Explanation: " + (_one_line(why) or "unknown.")
                lines.append(P.CRITIQUE_LINE.format(label=label))
        lines.append(f"Answer: {answer}")
        answer_label = {True: "correct.", False: "incorrect.", None: "unknown."}[verdict.answer_correct]
        lines.append(P.CRITIQUE_LINE.format(label=answer_label))
        critiqued = "the answer" if self.setting == "A" else "each reasoning step as well as the final answer"
        return P.CORRECTION.format(
            question=_one_line(question), critiqued=critiqued, reasoning="\n".join(lines)
        )

    def correct(
        self,
        image,
        question: str,
        steps: str | Sequence[str],
        answer: str | None,
        verdict: StepVerdict,
    ) -> Correction:
        """Rewrite the chain given the critique.

        Nothing is asked when the verdict is unparsed (a critique that cannot be read says nothing)
        or finds nothing wrong; the given chain comes back. Otherwise VISCO's correction prompt
        (``correction="critique"``), and a fresh SOLVE when its reply has no ``Answer:`` line or
        with ``correction="solve"``.
        """
        chain, answer = as_chain(steps, answer)
        given = Solution(chain, answer)
        if len(verdict.steps) != len(chain):
            raise ValueError(f"the verdict judges {len(verdict.steps)} steps, the chain has {len(chain)}")
        if verdict.unparsed:
            return Correction(given, asked=False, reason="the critique could not be read")
        if verdict.answer_correct and verdict.first_error is None:
            return Correction(given, asked=False, reason="the critique found nothing wrong")
        image = _image(image)
        prompts = []
        if self.correction == "critique":
            prompts.append(self.correction_prompt(question, chain, answer, verdict))
            [text] = self._chat(image, prompts[-1:], self.max_new_tokens)
            solution = parse_solution(text)
            if solution.parsed:
                return Correction(solution, asked=True, prompts=prompts)
        prompts.append(P.SOLVE.format(question=_one_line(question)))
        [text] = self._chat(image, prompts[-1:], self.max_new_tokens)
        return Correction(parse_solution(text), asked=True, fallback=True, prompts=prompts)


def _image(image):
    """Load once, so that every call of a critique shows the same decoded image."""
    from selfcorrect.vision.images import load_image

    return load_image(image)
