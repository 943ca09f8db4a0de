"""A DSG-style question critic: decompose the prompt into yes/no questions, ask the VLM each one.

Davidsonian Scene Graph (Cho et al., ICLR 2024) turns a prompt into atomic yes/no questions with a
dependency graph: a child question counts only if its parents were answered "yes". DSG uses an LLM
to write the questions; here the prompt goes through the world grammar
(:func:`selfcorrect.world.grammar.parse_prompt`), which gives the atoms exactly, and each atom is
worded as a question:

================ ======================================== ======================= ================
atom             question                                 expected answer          depends on
================ ======================================== ======================= ================
entity           ``Is there a circle?``                   Yes                      --
attribute        ``Is there a small red circle?``         Yes                      entity
count (exact)    ``How many red circles are there?``      2                        attribute/entity
count (at least) ``How many red circles are there?``      2, 3, ... 9              attribute/entity
absence          ``Is there a circle?`` (for "no circles") No                      --
relation         ``Is the red circle left of the blue     Yes                      both groups'
                 square?``                                                         existence
================ ======================================== ======================= ================

An attribute question is asked only when the group names a colour or size; a count question only
for exact counts and "at least n" with n >= 2 (existence already covers "at least one").

**Counts are asked, not confirmed.** DSG words a count as a yes/no question ("Are there exactly two
red circles?"); VLMs tend to confirm whatever number such a question offers. TIFA asks "How many
...?" as a multiple-choice question instead, and that is what this critic does: the choices are the
digits 0-9 (VQAv2's answer convention for counts), and P(expected answer) is the probability of the
required number, or of any number at least as large for "at least n". On the world VLM's val
split this judged 0.77 of count requirements right against 0.63 for the yes/no wording
(`benchmarks/results/vqa_count_questions_val.md`).

**Scoring.** The answers' probabilities come from :meth:`VLM.score
<selfcorrect.vision.vlm.VLM.score>` over each question's choices (``Yes`` / ``No``, or the
digits), a softmax over the choices as VQAScore does; one batched call per set of choices, in which
each image is encoded once. A question's answer score is the probability of its expected answers;
a question whose parent *failed* (answer score below 0.5) scores 0 instead (DSG's rule, applied
transitively). The image score is the mean over
all questions, and each requirement of the prompt gets a :class:`Finding` whose score is the
lowest of its questions' scores and which passes when all of them are at least 0.5.

**Outside the grammar.** A prompt the grammar rejects is scored with one VQAScore question
(``Does this figure show "{text}"? ...``); the verdict says so (``details["fallback"]``).

**Relations from boxes** (``relations="boxes"``): instead of asking a relation question, the
critic asks the VLM to find both object groups (the grounding prompt below) and applies the
world's rule (:func:`~selfcorrect.world.scene.relative_position`, GenEval's) to the boxes, as
GenEval and the detection critic judge positions: the question's P(expected) is 1 when the relation
holds for every (subject, reference) box pair, else 0 (also when a group got no box); the boxes
go in the question's ``details`` and their enclosing box on the finding. It is for a VLM that
sees where objects are but does not compose a relation in one answer (the world VLM: see its
model card), and costs a short generation per object group instead of a scored question.

**Sizes from boxes** (``sizes="boxes"``): likewise, an attribute question whose object has a size
("Is there a small red circle?") is not asked: the critic finds the object without its size ("Find
every red circle.") and applies the world's definition of "small" and "large"
(:func:`~selfcorrect.world.scene.size_of_box`) to each box: P(expected) is 1 when some box has
the size, else 0. With the world VLM, judging relations from boxes took pass/fail on 150 val
prompts from 0.835 to 0.865 and sizes too to 0.890 (pairwise 0.930, 0.955, 0.945;
``benchmarks/vqa_boxes.py``, ``benchmarks/results/vqa_boxes_val150.md``); each found phrase
costs a short generation.

**Localisation** (``ground=True``): for every object group of a failed requirement the critic
asks the VLM to find it (``Find every red circle. Answer with bounding boxes.``, boxes in percent
of the image side) and puts the box enclosing the answers on the finding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from selfcorrect.critics import prompts as P
from selfcorrect.critics.parsing import parse_boxes
from selfcorrect.critics.verdicts import Box, Finding, ImageVerdict, enclosing
from selfcorrect.errors import PromptError
from selfcorrect.world.grammar import parse_prompt
from selfcorrect.world.requirements import ObjectQuery, Requirements
from selfcorrect.world.scene import relative_position, size_of_box

ANSWERS = (P.YES, P.NO)
COUNT_ANSWERS = tuple(str(n) for n in range(10))  # the choices of a "How many ...?" question
JUDGED_BY = ("ask", "boxes")  # how relations and sizes are judged: asked, or from boxes
GROUND_MAX_NEW_TOKENS = 96  # a few boxes "[12, 34, 56, 78]"
PASS = 0.5  # an answer score at or above this counts as the expected answer


@dataclass(frozen=True)
class Question:
    """One yes/no question of a decomposition.

    Attributes:
        text: the question as asked (``"Is there a red circle?"``).
        expected: the answers, among ``choices``, that satisfy the prompt (``("Yes",)``;
            ``("2", ..., "9")`` for "at least two").
        parents: indices of the questions it depends on (all earlier in the list).
        requirement: index of the requirement it checks, in the order of
            :meth:`Requirements.describe`.
        kind: ``entity``, ``attribute``, ``count``, ``absence``, ``relation`` or ``vqascore``.
        groups: the object groups (indices into ``Requirements.objects``) it is about.
        relation: for a relation question, the relation (``"left of"``, ...) of ``groups[0]``
            to ``groups[1]``.
        choices: the answers scored (:data:`ANSWERS`, or :data:`COUNT_ANSWERS` for a count).
    """

    text: str
    expected: tuple[str, ...]
    parents: tuple[int, ...]
    requirement: int
    kind: str
    groups: tuple[int, ...] = ()
    relation: str | None = None
    choices: tuple[str, ...] = ANSWERS

    def expected_text(self) -> str:
        """The expected answer as the verdict says it: ``Yes``, ``2``, ``2 or more``."""
        if len(self.expected) > 1 and self.choices == COUNT_ANSWERS:
            return f"{self.expected[0]} or more"
        return " or ".join(self.expected)


@dataclass
class Decomposition:
    """The questions for one prompt and the requirements they check.

    Attributes:
        questions: in dependency order (parents first).
        requirements: one description per requirement (findings come in this order).
        queries: the object group each index in ``Question.groups`` refers to.
        fallback: why the prompt could not be decomposed ("" when it was).
    """

    questions: list[Question]
    requirements: list[str]
    queries: list[ObjectQuery] = field(default_factory=list)
    fallback: str = ""


def decompose(prompt: str | Requirements) -> Decomposition:
    """The DSG questions for a prompt (see the module docstring for the scheme).

    Args:
        prompt: a prompt in the world grammar, or its parsed :class:`Requirements`.

    Returns:
        A :class:`Decomposition`; a prompt the grammar rejects gives a single VQAScore question and
        ``fallback`` set to the grammar's error message.
    """
    if isinstance(prompt, Requirements):
        requirements = prompt
    else:
        try:
            requirements = parse_prompt(prompt)
        except PromptError as e:
            question = Question(P.VQASCORE.format(text=prompt), (P.YES,), (), 0, "vqascore")
            return Decomposition([question], [prompt], fallback=str(e))
    questions: list[Question] = []
    exists: dict[int, int] = {}  # object group -> the question that establishes it is there

    def add(question: Question) -> int:
        questions.append(question)
        return len(questions) - 1

    for g, req in enumerate(requirements.objects):
        query = req.query
        if req.count == 0:
            add(Question(_is_there(query), (P.NO,), (), g, "absence", (g,)))
            continue
        top = add(Question(_is_there(ObjectQuery(query.shape)), (P.YES,), (), g, "entity", (g,)))
        if query.colour is not None or query.size is not None:
            top = add(Question(_is_there(query), (P.YES,), (top,), g, "attribute", (g,)))
        exists[g] = top
        if req.exact or req.count > 1:
            expected = (str(req.count),) if req.exact else COUNT_ANSWERS[req.count :]
            question = f"How many {query.phrase(plural=True)} are there?"
            add(Question(question, expected, (top,), g, "count", (g,), choices=COUNT_ANSWERS))
    n_groups = len(requirements.objects)
    for r, rel in enumerate(requirements.relations):
        subject, reference = requirements.objects[rel.subject], requirements.objects[rel.reference]
        verb = "Are" if subject.count > 1 else "Is"
        text = (
            f"{verb} the {subject.query.phrase(subject.count > 1)} {rel.relation} "
            f"the {reference.query.phrase(reference.count > 1)}?"
        )
        parents = (exists[rel.subject], exists[rel.reference])
        add(
            Question(
                text, (P.YES,), parents, n_groups + r, "relation", (rel.subject, rel.reference), rel.relation
            )
        )
    return Decomposition(questions, requirements.describe(), [r.query for r in requirements.objects])


def answer_scores(decomposition: Decomposition, p_expected: Sequence[float]) -> list[float]:
    """Each question's score after DSG's dependency rule.

    Args:
        decomposition: the questions.
        p_expected: per question, the probability of its expected answers.

    Returns:
        Per question: ``p_expected``, or 0 when any parent's score is below 0.5 (a parent that
        was itself zeroed counts as failed, so the rule applies down the whole graph).
    """
    if len(p_expected) != len(decomposition.questions):
        raise ValueError("one probability per question")
    scores: list[float] = []
    for q, p in zip(decomposition.questions, p_expected):
        scores.append(0.0 if any(scores[i] < PASS for i in q.parents) else float(p))
    return scores


def vqascore(vlm, images: Sequence, texts: Sequence[str], *, batch_size: int = 8) -> torch.Tensor:
    """VQAScore (Lin et al. 2024): P("Yes") to ``Does this figure show "{text}"? ...`` per pair.

    Args:
        vlm: a :class:`selfcorrect.vision.vlm.VLM`.
        images: B images (repeat an image to score it against several texts; it is encoded once).
        texts: B texts.

    Returns:
        ``(B,)`` float32: the softmax of the ``Yes`` / ``No`` log-probabilities, taken at ``Yes``.
    """
    if len(images) != len(texts):
        raise ValueError(f"got {len(images)} images for {len(texts)} texts; pass one text per image")
    prompts = [P.VQASCORE.format(text=t) for t in texts]
    logp = vlm.score(list(images), prompts, list(ANSWERS), batch_size=batch_size)  # (B, 2)
    return torch.softmax(logp.float(), dim=-1)[:, 0]


class VQACritic:
    """Decompose the prompt into yes/no questions (DSG), ask a VLM each one, score the answers.

    Args:
        vlm: a :class:`selfcorrect.vision.vlm.VLM`, or anything with its ``score`` (and, for
            ``ground=True``, ``chat``) methods.
        threshold: the image passes when its score (the mean question score) is at least this;
            0.9 asks for nearly every question to be answered as expected, confidently.
        ground: ask the VLM for the boxes of the objects of failed requirements.
        relations: ``"ask"`` the relation questions, or judge them from the VLM's ``"boxes"``
            (see the module docstring).
        sizes: ``"ask"`` the attribute questions that name a size, or judge the size from the
            VLM's ``"boxes"`` (see the module docstring).
        batch_size: prompts per forward pass.
    """

    kinds = frozenset({"image"})
    name = "vqa"

    def __init__(
        self,
        vlm,
        *,
        threshold: float = 0.9,
        ground: bool = False,
        relations: str = "ask",
        sizes: str = "ask",
        batch_size: int = 8,
    ):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if relations not in JUDGED_BY:
            raise ValueError(f"relations must be one of {JUDGED_BY}, got {relations!r}")
        if sizes not in JUDGED_BY:
            raise ValueError(f"sizes must be one of {JUDGED_BY}, got {sizes!r}")
        self.vlm = vlm
        self.threshold = threshold
        self.ground = ground
        self.relations = relations
        self.sizes = sizes
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"VQACritic({self.vlm!r})"

    def critique(self, image, prompt: str) -> ImageVerdict:
        """How well ``image`` matches ``prompt``, with one finding per requirement."""
        return self.critique_many([image], [prompt])[0]

    def critique_many(self, images: Sequence, prompts: Sequence[str]) -> list[ImageVerdict]:
        """:meth:`critique` for B (image, prompt) pairs: one batched scoring call per set of
        choices (yes/no, digits) and one batched generation for what is judged from boxes."""
        if len(images) != len(prompts) or not prompts:
            raise ValueError(f"give one prompt per image; got {len(images)} images, {len(prompts)} prompts")
        decompositions = [decompose(p) for p in prompts]
        # (item, question) of every question, and which of them are asked (the rest: from boxes)
        flat = [(n, q) for n, d in enumerate(decompositions) for q in d.questions]
        boxed = [k for k, (n, q) in enumerate(flat) if self._from_boxes(q, decompositions[n])]
        asked = sorted(set(range(len(flat))) - set(boxed))
        p_expected = [0.0] * len(flat)
        answers: list[dict[str, float] | None] = [None] * len(flat)  # per asked question, P(choice)
        for choices in sorted({flat[k][1].choices for k in asked}):  # one call per set of choices
            mine = [k for k in asked if flat[k][1].choices == choices]
            logp = self.vlm.score(
                [images[flat[k][0]] for k in mine],
                [flat[k][1].text for k in mine],
                list(choices),
                batch_size=self.batch_size,
            )
            for k, probs in zip(mine, torch.softmax(logp.float(), dim=-1).tolist()):
                answers[k] = dict(zip(choices, probs))
                p_expected[k] = sum(answers[k][a] for a in flat[k][1].expected)
        boxes_of: dict[int, list[list[Box]]] = {}  # boxed question -> the boxes of each phrase
        if boxed:
            # the phrases to find: a relation's two groups as named, a sized object without its size
            phrases = {k: self._phrases(flat[k][1], decompositions[flat[k][0]]) for k in boxed}
            wanted = {(flat[k][0], p) for k in boxed for p in phrases[k]}
            found = self._find(list(images), wanted, max_new_tokens=GROUND_MAX_NEW_TOKENS)
            for k in boxed:
                n, q = flat[k]
                boxes = boxes_of[k] = [found[n, p] for p in phrases[k]]
                if q.kind == "relation":
                    p_expected[k] = _all_hold(boxes[0], q.relation, boxes[1])
                else:
                    size = decompositions[n].queries[q.groups[0]].size
                    p_expected[k] = float(any(size_of_box(b) == size for b in boxes[0]))
        verdicts, start = [], 0
        for d in decompositions:
            count = len(d.questions)
            part = slice(start, start + count)
            verdicts.append(self._verdict(d, p_expected[part], answers[part]))
            for k, q, record in zip(
                range(start, start + count), d.questions, verdicts[-1].details["questions"]
            ):
                if k in boxes_of:
                    record["boxes"] = [[list(b) for b in group] for group in boxes_of[k]]
                    finding = verdicts[-1].findings[q.requirement]
                    finding.box = enclosing([b for group in boxes_of[k] for b in group])
            start += count
        if self.ground:
            self._localise(list(images), decompositions, verdicts)
        return verdicts

    def _verdict(
        self, d: Decomposition, p_expected: list[float], answers: list[dict[str, float] | None]
    ) -> ImageVerdict:
        scores = answer_scores(d, p_expected)
        findings = []
        for r, description in enumerate(d.requirements):
            mine = [i for i, q in enumerate(d.questions) if q.requirement == r]
            lines = [
                f"{d.questions[i].text} P({d.questions[i].expected_text()})={p_expected[i]:.2f}"
                + (" (from the VLM's boxes)" if answers[i] is None else "")
                + (" (a question it depends on failed)" if _zeroed(d, scores, i) else "")
                for i in mine
            ]
            score = min(scores[i] for i in mine)
            findings.append(Finding(description, score >= PASS, score, None, "; ".join(lines)))
        score = sum(scores) / len(scores)
        failed = [f.requirement for f in findings if not f.passed]
        explanation = ("fails: " + ", ".join(failed)) if failed else "every requirement holds"
        details = {
            "questions": [
                {
                    "question": q.text,
                    "kind": q.kind,
                    "expected": q.expected_text(),
                    "parents": list(q.parents),
                    "answers": a,  # P(choice) of an asked question; None when judged from boxes
                    "p_expected": p,
                    "score": s,
                }
                for q, p, a, s in zip(d.questions, p_expected, answers, scores)
            ]
        }
        if d.fallback:
            details["fallback"] = "vqascore"
            details["reason"] = d.fallback
            explanation = (
                f"the prompt is outside the world grammar ({d.fallback}); scored with one VQAScore "
                f"question instead: {explanation}"
            )
        return ImageVerdict(
            score=min(max(score, 0.0), 1.0),
            passed=score >= self.threshold,
            findings=findings,
            explanation=explanation,
            critic=self.name,
            details=details,
        )

    def _from_boxes(self, q: Question, d: Decomposition) -> bool:
        """Whether question ``q`` is judged from the VLM's boxes instead of asked."""
        if q.kind == "relation":
            return self.relations == "boxes"
        return self.sizes == "boxes" and q.kind == "attribute" and d.queries[q.groups[0]].size is not None

    @staticmethod
    def _phrases(q: Question, d: Decomposition) -> list[str]:
        """What to find for a question judged from boxes: both groups of a relation as named, or a
        sized object without its size (``"red circle"`` for ``"small red circle"``)."""
        if q.kind == "relation":
            return [d.queries[g].phrase() for g in q.groups]
        query = d.queries[q.groups[0]]
        return [ObjectQuery(query.shape, query.colour).phrase()]

    def _find(self, images: list, asks: set, **generation) -> dict:
        """Boxes of ``asks`` (``(item, phrase)`` pairs), ``{(item, phrase): [box, ...]}``; one
        batched chat call (``generation`` goes to ``chat``), each pair asked once."""
        asks = sorted(asks)
        prompts = [P.GROUND.format(phrase=phrase) for _, phrase in asks]
        texts = self.vlm.chat([images[n] for n, _ in asks], prompts, batch_size=self.batch_size, **generation)
        return {ask: parse_boxes(text) for ask, text in zip(asks, texts)}

    def _localise(
        self, images: list, decompositions: list[Decomposition], verdicts: list[ImageVerdict]
    ) -> None:
        """Ask for the boxes of the object groups of failed findings (:meth:`_find`)."""
        wanted: dict[tuple[int, int], list[int]] = {}  # (item, finding) -> its object groups
        for n, (d, verdict) in enumerate(zip(decompositions, verdicts)):
            for r, finding in enumerate(verdict.findings):
                if finding.passed or d.fallback or finding.box is not None:
                    continue  # passed, or already placed (a relation judged from boxes)
                wanted[n, r] = sorted({g for q in d.questions if q.requirement == r for g in q.groups})
        if not any(wanted.values()):
            return
        phrase = {(n, g): decompositions[n].queries[g].phrase() for (n, _), gs in wanted.items() for g in gs}
        found = self._find(images, {(n, p) for (n, _), p in phrase.items()})
        for (n, r), groups in wanted.items():
            verdicts[n].findings[r].box = enclosing([b for g in groups for b in found[n, phrase[n, g]]])


def _all_hold(subjects: list[Box], relation: str, references: list[Box]) -> float:
    """1.0 when ``relation`` holds for every (subject, reference) box pair (the world's rule for
    groups), else 0.0 (also when a group has no box)."""
    pairs = [(a, b) for a in subjects for b in references]
    return float(bool(pairs) and all(relation in relative_position(a, b) for a, b in pairs))


def _zeroed(d: Decomposition, scores: list[float], i: int) -> bool:
    return any(scores[j] < PASS for j in d.questions[i].parents)


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _is_there(query: ObjectQuery) -> str:
    return f"Is there {_article(query.phrase())}?"
