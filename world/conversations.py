"""Training conversations for the world VLM: every task a critic will ask of it, with verified answers.

:class:`ConversationSet` is a seeded, map-style data set (item ``i`` is a pure function of
``(seed, i)``) of :class:`Example` conversations in transformers' chat format. The labels come
from the scene spec (rendered images), from the degradation's ground truth (degraded renders), or
from the oracle (images made by the world text-to-image model, passed in as :class:`LabelledImage`),
never from a model. The prompts are the critics' own (:mod:`selfcorrect.critics.prompts`), so the
embedded VLM learns exactly the formats the critics send.

Tasks (:data:`TASKS`) and what the assistant answers:

=============== ================================================================================
task            answer
=============== ================================================================================
caption         a caption of the scene in one of the grammar's styles
vqa             2-5 turns of world questions (existence, count, colour, shape, relation, where):
                ``Yes`` / ``No`` / a digit / a colour / a shape / a relation
ground          bounding boxes ``[x0, y0, x1, y1]`` (percent of the image side) or ``None``
relation        (experimental, weight 0) 1-3 yes/no relation questions, most in the axis's first
                word (``left of``, ``above``): see :data:`FIRST_WORD_SHARE`
relate          (experimental, weight 0) a relation question asked to find both objects first:
                both centres along the relation's axis, the relation they make, then ``Yes`` /
                ``No`` (``From the left: the red circle at 18, the blue square at 70. The red
                circle is left of the blue square. Yes.``)
match           VQAScore's yes/no question about a prompt or a hard-negative caption
steps           a step-by-step answer: ``Step 1: ...`` lines, then ``Answer: ...``
queries         LookBack's visual questions that check the last step of a chain (which may be
                wrong: a step naming the wrong colour is checked by a question about that colour)
critique        VISCO's per-step JSON verdict on a chain (with injected errors), most of the time
                (:data:`EVIDENCE_SHARE`) given LookBack's visual evidence: the questions that
                check the steps as shown, with their true answers
pointwise       LLaVA-Critic's pointwise verdict on an answer or caption: ``Final Score: N``
pairwise        LLaVA-Critic's pairwise verdict on two answers: ``The better response: first``
image_pointwise the pointwise verdict on an image against its text prompt
image_pairwise  which of two images matches the prompt better
fix_caption     a corrected caption, given a caption with a one-word mistake (TLDR-style
                flagged words, or no hints)
=============== ================================================================================

No scene, question or caption names a held-out (colour, shape) combination
(:data:`~selfcorrect.world.suites.HELDOUT_COMBOS`); images whose truth shows one, or has an
unreadable object, are used only for image-level judgements.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, replace

from PIL import Image

from selfcorrect.critics import prompts as P
from selfcorrect.world.data import (
    NO,
    OPPOSITE,
    RELATION_QUESTION,
    YES,
    _derive,
    _descriptions,
    _unique,
    _words,
    relation_pairs,
    scene_qa,
)
from selfcorrect.world.degrade import degrade
from selfcorrect.world.grammar import CAPTION_STYLES, caption, parse_prompt
from selfcorrect.world.negatives import hard_negatives
from selfcorrect.world.render import render
from selfcorrect.world.requirements import RequirementResult, evaluate
from selfcorrect.world.sampling import UnsatisfiableError, random_scene, sample_scene
from selfcorrect.world.scene import COLOURS, DEFAULT_CANVAS, RELATIONS, Scene, WorldObject, relative_position
from selfcorrect.world.suites import is_heldout_combo, load_suite

SPLIT_SEEDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
# Task -> share of the training mix. Perception (vqa, ground, caption) gets most of it: the
# judgement formats stand on it.
MIX: dict[str, float] = {
    "caption": 0.08,
    "vqa": 0.24,
    "ground": 0.14,
    "relation": 0.0,  # experimental: --mix relation=0.15 turns it on
    "relate": 0.0,  # experimental (see critics.prompts.LOCATE_FIRST): --mix relate=0.2 turns it on
    "match": 0.08,
    "steps": 0.06,
    "queries": 0.04,
    "critique": 0.07,
    "pointwise": 0.06,
    "pairwise": 0.05,
    "image_pointwise": 0.08,
    "image_pairwise": 0.04,
    "fix_caption": 0.06,
}
TASKS: tuple[str, ...] = tuple(MIX)
# In the ``relation`` task, the share of questions that use their axis's first word ("left of",
# "above"). Asked with both words alike (as ``vqa`` does), the answer is an XOR of the word and of
# which object comes first, so neither alone predicts it and gradient descent gets no start on
# finding where the objects are; with one word dominant, the order alone predicts most answers.
FIRST_WORD_SHARE = 0.8
IMAGE_TIE_SHARE = 0.1  # image pairs drawn to tie (equal scores); the rest differ where 8 draws allow
EVIDENCE_SHARE = 0.7  # critiques shown LookBack's evidence bullets; the rest are plain critiques
FIRST_WORDS = {"left of": "left of", "right of": "left of", "above": "above", "below": "above"}
DEGRADED_SHARE = 0.3  # of the images of a rendered scene
TEXTURE_MAX = 0.15
_BOX = re.compile(r"\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]")


@dataclass
class Example:
    """One training conversation.

    Attributes:
        images: 1 or 2 RGB ``PIL.Image`` (``canvas x canvas``), shown in the first user turn.
        messages: chat-format turns, user first, alternating; user content is a list of
            ``{"type": "image"}`` (one per image, first turn only) and ``{"type": "text", ...}``
            parts; assistant content is one text part.
        task: one of :data:`TASKS`.
    """

    images: list[Image.Image]
    messages: list[dict]
    task: str


@dataclass
class LabelledImage:
    """An image made by a text-to-image model, labelled by the oracle.

    Attributes:
        image: RGB ``PIL.Image``.
        prompt: the prompt it was generated from (a suite prompt).
        truth: what the oracle read in it (``oracle.analyse``), a list of ``Detected``.
    """

    image: Image.Image
    prompt: str
    truth: list


# ---------------------------------------------------------------------------------------------
# Formats shared with the critics and the evaluation


def format_box(box) -> str:
    """``(0.1, 0.2, 0.35, 0.45)`` -> ``"[10, 20, 35, 45]"`` (percent of the image side)."""
    return "[" + ", ".join(str(round(v * 100)) for v in box) + "]"


def parse_boxes(text: str) -> list[tuple[float, float, float, float]]:
    """Every ``[x0, y0, x1, y1]`` in ``text`` as normalised boxes; malformed ones are skipped."""
    boxes = []
    for match in _BOX.finditer(text):
        x0, y0, x1, y1 = (int(v) / 100 for v in match.groups())
        if x0 < x1 and y0 < y1:
            boxes.append((x0, y0, x1, y1))
    return boxes


def vqa_prompt(question: str) -> str:
    """A world question as the user asks it: ``"is there a red circle?"`` -> ``"Is there a red circle?"``."""
    return question[:1].upper() + question[1:]


def answer_text(answer: str) -> str:
    """A world answer as the assistant says it: ``yes`` / ``no`` become ``Yes`` / ``No``."""
    return {"yes": P.YES, "no": P.NO}.get(answer, answer)


def grounding_prompt(phrase: str) -> str:
    """``"red circle"`` -> ``"Find every red circle. Answer with bounding boxes."``."""
    return P.GROUND.format(phrase=phrase)


def grounding_answer(boxes) -> str:
    """Boxes left to right (then top to bottom), comma-separated; ``None`` when there are none."""
    boxes = sorted(boxes, key=lambda b: (round(b[0], 2), b[1]))
    return ", ".join(format_box(b) for b in boxes) or P.NO_BOXES


def score_of(results: list[RequirementResult]) -> int:
    """The share of requirements that hold, as a score out of 100 in steps of 10."""
    return int(round(10 * sum(r.passed for r in results) / max(1, len(results)))) * 10


def reasons_of(results: list[RequirementResult]) -> str:
    """The failed requirements in words, or that everything holds."""
    failed = [f"It should show {r.description}, but {r.reason}." for r in results if not r.passed]
    return " ".join(failed) or "It shows everything the prompt asks for."


# ---------------------------------------------------------------------------------------------
# The data set


class ConversationSet:
    """Seeded training conversations for the world VLM.

    Args:
        size: number of items.
        seed: item ``i`` depends only on ``(seed, i)`` (and on ``generated``).
        generated: images of the world text-to-image model with oracle labels; when given, a
            share ``generated_share`` of the image-level judgements and of the perception tasks
            use them.
        mix: task -> weight (default :data:`MIX`).
        canvas: image side in pixels.
        split: the prompt suite that image-level judgements draw prompts from.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        generated: list[LabelledImage] | None = None,
        *,
        mix: dict[str, float] | None = None,
        generated_share: float = 0.3,
        canvas: int = DEFAULT_CANVAS,
        split: str = "train",
    ):
        mix = dict(MIX if mix is None else mix)
        unknown = sorted(set(mix) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; tasks are {', '.join(TASKS)}")
        if size < 0:
            raise ValueError(f"size must be at least 0, got {size}")
        self.size, self.seed, self.canvas = size, seed, canvas
        self.generated = list(generated or [])
        self.generated_share = generated_share if self.generated else 0.0
        self.tasks = [t for t in TASKS if mix.get(t, 0) > 0]
        self.weights = [mix[t] for t in self.tasks]
        self.prompts = [p.prompt for p in load_suite(split)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a set of {self.size}")
        rng = random.Random(_derive(self.seed, index, "conversation"))
        task = rng.choices(self.tasks, self.weights)[0]
        images, turns = getattr(self, f"_{task}")(rng)
        return Example(images, _messages(turns, len(images)), task)

    # --- images -------------------------------------------------------------------------------

    def scene_image(self, rng: random.Random, scene: Scene | None = None) -> tuple[Image.Image, list]:
        """A rendered, degraded or generated image and the objects really in it (a usable truth).

        Every perception task draws its image here; so does the vision tower's dense pretraining
        (:mod:`selfcorrect.train.world_vision`), so that it sees the images the VLM will see.
        """
        for _ in range(20):
            if self.generated and rng.random() < self.generated_share:
                item = rng.choice(self.generated)
                if _usable(item.truth):
                    return item.image, [_as_object(d) for d in item.truth]
                continue
            current = scene or _recoloured(random_scene(rng.randrange(2**31), max_objects=5))
            current = replace(current, texture=rng.uniform(0, TEXTURE_MAX) if rng.random() < 0.5 else 0.0)
            if rng.random() < DEGRADED_SHARE:
                image, truth = degrade(current, rng.randrange(2**31), size=self.canvas)
                if truth and _usable(truth):
                    return image, [_as_object(d) for d in truth]
                continue
            return render(current, self.canvas), list(current.objects)
        raise RuntimeError("no usable image in 20 draws")  # practically unreachable

    def _judged_image(self, rng: random.Random, prompt: str, fail: bool):
        """An image for ``prompt`` and the per-requirement truth on it.

        ``fail`` asks for a scene of one of the prompt's hard negatives (so the prompt fails);
        generated images come as they are.
        """
        requirements = parse_prompt(prompt)
        if self.generated and rng.random() < self.generated_share:
            matching = [g for g in self.generated if g.prompt == prompt] or self.generated
            item = rng.choice(matching)
            return item.image, evaluate(item.truth, parse_prompt(item.prompt)), item.prompt
        seed = rng.randrange(2**31)
        scene = _recoloured(sample_scene(requirements, seed))
        if fail:
            negatives = hard_negatives(scene, prompt, n=6, rng=rng) if _all_pass(scene, requirements) else []
            for negative in negatives:
                try:
                    scene = _recoloured(sample_scene(parse_prompt(negative.text), seed))
                    break
                except UnsatisfiableError:
                    continue
        scene = replace(scene, texture=rng.uniform(0, TEXTURE_MAX) if rng.random() < 0.5 else 0.0)
        if rng.random() < DEGRADED_SHARE:
            image, truth = degrade(scene, rng.randrange(2**31), size=self.canvas)
        else:
            image, truth = render(scene, self.canvas), list(scene.objects)
        return image, evaluate(truth, requirements), prompt

    # --- perception ---------------------------------------------------------------------------

    def _caption(self, rng):
        image, objects = self.scene_image(rng)
        text = caption(Scene(tuple(objects)), rng.choice(CAPTION_STYLES), rng)
        return [image], [(P.DESCRIBE, text)]

    def _vqa(self, rng):
        image, objects = self.scene_image(rng)
        qa = scene_qa(Scene(tuple(objects)), rng)
        rng.shuffle(qa)
        turns = []
        for item in qa[: rng.randint(2, 5)]:
            question = vqa_prompt(item.question)
            if rng.random() < 0.25:  # LookBack asks its verification questions this way
                question = P.VERIFY.format(question=question)
            turns.append((question, answer_text(item.answer)))
        return [image], turns

    def _ground(self, rng):
        image, objects = self.scene_image(rng)
        turns = []
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.15:
                phrase = _absent_phrase(objects, rng)
                turns.append((grounding_prompt(phrase), P.NO_BOXES))
                continue
            size, colour, shape = rng.choice(_descriptions(rng.choice(objects)))
            matching = [o.box for o in objects if _fits((size, colour, shape), o)]
            turns.append((grounding_prompt(_words((size, colour, shape))), grounding_answer(matching)))
        return [image], turns

    def _scene_with_pairs(self, rng):
        """A scene (image, objects, names, pairs: :func:`relation_pairs`) with two objects in a
        relation, in at most 20 draws; None when there was none (practically never)."""
        for _ in range(20):
            image, objects = self.scene_image(rng)
            names, pairs = relation_pairs(objects)
            if pairs:
                return image, objects, names, pairs
        return None

    def _relation(self, rng):
        if (found := self._scene_with_pairs(rng)) is None:
            return self._vqa(rng)
        image, objects, names, pairs = found
        turns = []
        for _ in range(rng.randint(1, 3)):
            i, j, rels = rng.choice(pairs)  # both orders are among the pairs: Yes and No alike
            a, b = _words(rng.choice(names[i])), _words(rng.choice(names[j]))
            first = FIRST_WORDS[rng.choice(sorted(rels))]  # an axis on which a relation holds
            relation = first if rng.random() < FIRST_WORD_SHARE else OPPOSITE[first]
            question = vqa_prompt(RELATION_QUESTION.format(a=a, relation=relation, b=b))
            turns.append((question, answer_text(YES if relation in rels else NO)))
        return [image], turns

    def _relate(self, rng):
        if (found := self._scene_with_pairs(rng)) is None:
            return self._vqa(rng)
        image, objects, names, pairs = found
        turns = []
        for _ in range(rng.randint(1, 3)):
            i, j, rels = rng.choice(pairs)
            a, b = _words(rng.choice(names[i])), _words(rng.choice(names[j]))
            holds = rng.choice(sorted(rels))
            relation = rng.choice((holds, OPPOSITE[holds]))  # a yes, or a clear no
            question = P.LOCATE_FIRST.format(
                question=vqa_prompt(RELATION_QUESTION.format(a=a, relation=relation, b=b))
            )
            turns.append((question, located_answer(a, objects[i].box, relation, b, objects[j].box, rels)))
        return [image], turns

    def _match(self, rng):
        if rng.random() < 0.5:  # a suite prompt on an image made for it (or for a negative of it)
            prompt = rng.choice(self.prompts)
            image, results, prompt = self._judged_image(rng, prompt, fail=rng.random() < 0.5)
            holds = all(r.passed for r in results)
        else:  # a caption of the image, or one of its hard negatives
            image, objects = self.scene_image(rng)
            prompt, holds = _caption_or_negative(Scene(tuple(objects)), rng)
        return [image], [(P.VQASCORE.format(text=prompt), P.YES if holds else P.NO)]

    # --- reasoning chains (LookBack / VISCO) --------------------------------------------------

    def _steps(self, rng):
        image, objects = self.scene_image(rng)
        chain = _chain(objects, rng)
        return [image], [(P.SOLVE.format(question=chain.question), chain.text())]

    def _queries(self, rng):
        image, objects = self.scene_image(rng)
        chain = _chain(objects, rng)
        shown, _ = chain.with_errors(rng)  # LookBack schedules its questions for the chain it judges
        k = rng.randrange(len(shown.steps))
        steps = "\n".join(f"Step {i + 1}: {text}" for i, text in enumerate(shown.steps[: k + 1]))
        asked = P.VISUAL_QUERIES.format(question=chain.question, steps=steps)
        return [image], [(asked, shown.checks[k][0] or P.NOT_APPLICABLE)]

    def _critique(self, rng):
        image, objects = self.scene_image(rng)
        chain = _chain(objects, rng)
        shown, verdict = chain.with_errors(rng)
        evidence = ""
        if rng.random() < EVIDENCE_SHARE:  # LookBack's synthesis step: the visual answers come along
            # the questions that check the steps as shown, with their true answers: a wrong step
            # meets an answer that contradicts it (another box, "None", another count)
            evidence = P.EVIDENCE.format(bullets=shown.evidence())
        steps = "\n".join(f"Step {i + 1}: {text}" for i, text in enumerate(shown.steps))
        asked = P.CRITIQUE.format(
            question=chain.question, steps=steps, answer=shown.answer, evidence=evidence
        )
        return [image], [(asked, json.dumps(verdict))]

    # --- LLaVA-Critic judgements ---------------------------------------------------------------

    def _response(self, rng, objects):
        """A question about the scene, a response to it and the response's score and reasons."""
        scene = Scene(tuple(objects))
        if rng.random() < 0.4:
            text, holds = _caption_or_negative(scene, rng)
            results = evaluate(objects, parse_prompt(text))
            return P.DESCRIBE, text, score_of(results), reasons_of(results)
        item = rng.choice(scene_qa(scene, rng))
        truth = answer_text(item.answer)
        if rng.random() < 0.5:
            return vqa_prompt(item.question), truth, 100, "The answer is correct."
        wrong = _wrong_answer(item, rng)
        return vqa_prompt(item.question), wrong, 0, f"The answer is wrong: it is {truth}, not {wrong}."

    def _pointwise(self, rng):
        image, objects = self.scene_image(rng)
        question, response, score, reasons = self._response(rng, objects)
        asked = P.LLAVA_CRITIC_POINTWISE.format(question=question, response=response)
        return [image], [(asked, f"{P.SCORE_PREFIX}{score}\n{reasons}")]

    def _pairwise(self, rng):
        image, objects = self.scene_image(rng)
        for _ in range(10):
            a, b = self._response(rng, objects), self._response(rng, objects)
            if a[0] == b[0] and a[1] != b[1]:
                break
            b = None
        if b is None:  # fall back to one true and one wrong answer to one question
            item = rng.choice(scene_qa(Scene(tuple(objects)), rng))
            truth, wrong = answer_text(item.answer), _wrong_answer(item, rng)
            a = (vqa_prompt(item.question), truth, 100, "The answer is correct.")
            b = (a[0], wrong, 0, f"The answer is wrong: it is {truth}, not {wrong}.")
        if rng.random() < 0.5:
            a, b = b, a
        asked = P.LLAVA_CRITIC_PAIRWISE.format(question=a[0], first=a[1], second=b[1])
        if a[2] == b[2]:
            verdict = P.TIE_RESPONSES
        else:
            verdict = P.BETTER_RESPONSE + (P.FIRST if a[2] > b[2] else P.SECOND)
        return [image], [(asked, f"{verdict}\nFirst: {a[3]} Second: {b[3]}")]

    def _image_pointwise(self, rng):
        prompt = rng.choice(self.prompts)
        image, results, prompt = self._judged_image(rng, prompt, fail=rng.random() < 0.5)
        asked = P.IMAGE_POINTWISE.format(prompt=prompt)
        return [image], [(asked, f"{P.SCORE_PREFIX}{score_of(results)}\n{reasons_of(results)}")]

    def _image_pairwise(self, rng):
        prompt = rng.choice(self.prompts)
        first = self._judged_image(rng, prompt, fail=rng.random() < 0.5)
        # two independent draws tie about half the time (both pass), and a critic trained on that
        # answers "tie" to every pair; the pairs it is asked about (and DPO's) mostly differ
        # (the model card's run 13, not kept, is the one run trained on these)
        tie = rng.random() < IMAGE_TIE_SHARE
        for _ in range(8):
            second = self._judged_image(rng, first[2], fail=rng.random() < 0.5)
            if (score_of(second[1]) == score_of(first[1])) == tie:
                break
        a, b = score_of(first[1]), score_of(second[1])
        verdict = P.TIE_IMAGES if a == b else P.BETTER_IMAGE + (P.FIRST if a > b else P.SECOND)
        reasons = f"First: {reasons_of(first[1])} Second: {reasons_of(second[1])}"
        return [first[0], second[0]], [(P.IMAGE_PAIRWISE.format(prompt=first[2]), f"{verdict}\n{reasons}")]

    # --- correction ---------------------------------------------------------------------------

    def _fix_caption(self, rng):
        image, objects = self.scene_image(rng)
        scene = Scene(tuple(objects))
        truth = caption(scene, "positional", rng)
        negatives = hard_negatives(scene, truth, n=3, rng=rng)
        if not negatives or rng.random() < 0.15:  # a true caption stays as it is
            shown, flagged = truth, [rng.choice(truth.split())]
        else:
            shown = rng.choice(negatives).text
            flagged = [w for w in shown.split() if w not in truth.split()] or [rng.choice(shown.split())]
            if rng.random() < 0.3:  # hints are not verdicts: a true word may be flagged too
                flagged.append(rng.choice(shown.split()))
        if rng.random() < 0.3:
            asked = P.CORRECT_CAPTION.format(caption=shown)
        else:
            asked = P.FIX_CAPTION.format(words=", ".join(dict.fromkeys(flagged)), caption=shown)
        return [image], [(asked, truth)]


# ---------------------------------------------------------------------------------------------
# Reasoning chains with verifiable steps


@dataclass
class _Step:
    """One step of a chain: its text, a wrong version with the explanation, its LookBack check
    (the visual question and its true answer); ``wrong_query`` / ``wrong_query_answer`` when the
    wrong version is checked by another question (it names another object), else None."""

    text: str
    wrong: str
    explanation: str
    query: str
    query_answer: str
    wrong_query: str | None = None
    wrong_query_answer: str | None = None

    def check(self, wrong: bool) -> tuple[str, str]:
        """The visual question that checks the step as shown, and its true answer."""
        if wrong and self.wrong_query is not None:
            return self.wrong_query, self.wrong_query_answer
        return self.query, self.query_answer


@dataclass
class _Shown:
    """A chain as shown: its steps, its answer, and per step the visual question LookBack would
    ask of it with the true answer (``("", "")`` for a step with nothing to look at)."""

    steps: list[str]
    answer: str
    checks: list[tuple[str, str]]

    def evidence(self) -> str:
        """LookBack's synthesis bullets for this chain, as :data:`P.EVIDENCE` wants them."""
        return P.evidence_bullets([[check] if check[0] else [] for check in self.checks])


@dataclass
class _Chain:
    question: str
    steps: list[_Step]
    answer: str
    wrong_answer: str

    def text(self) -> str:
        lines = [f"Step {i + 1}: {s.text}" for i, s in enumerate(self.steps)]
        return "\n".join([*lines, f"Answer: {self.answer}"])

    def with_errors(self, rng: random.Random) -> tuple[_Shown, dict]:
        """The chain as a model might have written it (half the time with one wrong step, and
        then half the time a wrong answer too) and VISCO's verdict on it."""
        wrong_step = rng.randrange(len(self.steps)) if rng.random() < 0.5 else None
        wrong_answer = wrong_step is not None and rng.random() < 0.5 or rng.random() < 0.1
        verdict: dict = {}
        shown, checks = [], []
        for i, step in enumerate(self.steps):
            bad = i == wrong_step
            shown.append(step.wrong if bad else step.text)
            checks.append(step.check(bad))
            verdict[f"step_{i + 1}"] = {
                "correctness": not bad,
                "explanation": step.explanation if bad else "",
            }
        verdict["answer_correctness"] = not wrong_answer
        return _Shown(shown, self.wrong_answer if wrong_answer else self.answer, checks), verdict


def _chain(objects: list, rng: random.Random) -> _Chain:
    """A question about ``objects`` with a step-by-step answer (count, existence, relation or colour)."""
    kinds = ["count", "existence", "colour"]
    pairs = [
        (a, b, rel)
        for a in objects
        for b in objects
        if a is not b and (rel := relative_position(a.box, b.box)) and _name(a, objects) and _name(b, objects)
    ]
    if pairs:
        kinds.append("relation")
    kind = rng.choice(kinds)
    if kind == "relation":
        return _relation_chain(*rng.choice(pairs), objects, rng)
    if kind == "colour":
        named = [(o, d) for o in objects for d in ((None, None, o.shape), (o.size, None, o.shape))]
        named = [(o, d) for o, d in named if _unique(d, objects)]
        if named:
            return _colour_chain(*rng.choice(named), objects, rng)
    if kind == "existence":
        return _existence_chain(objects, rng)
    return _count_chain(objects, rng)


def _count_chain(objects, rng) -> _Chain:
    d = rng.choice(_descriptions(rng.choice(objects)))
    if rng.random() < 0.5:
        d = (None, d[1], d[2]) if d[1] else (None, None, d[2])
    found = sorted((o for o in objects if _fits(d, o)), key=lambda o: o.box[0])
    plural = _words(d, plural=True)
    steps = [_object_step(o, d, objects, rng) for o in found]
    n = len(found)
    wrong_n = n + rng.choice([-1, 1]) if n > 0 else 1
    summary = f"So there {'is' if n == 1 else 'are'} {n} {_words(d, plural=n != 1)}."
    steps.append(
        _Step(
            summary,
            f"So there {'is' if wrong_n == 1 else 'are'} {wrong_n} {_words(d, plural=wrong_n != 1)}.",
            f"there {'is' if n == 1 else 'are'} {n}, not {wrong_n}",
            f"How many {plural} are there?",
            str(n),
        )
    )
    return _Chain(f"How many {plural} are there?", steps, str(n), str(wrong_n))


def _existence_chain(objects, rng) -> _Chain:
    present = rng.random() < 0.5
    if present:
        obj = rng.choice(objects)
        d = (None, obj.colour, obj.shape)
    else:
        obj = rng.choice(objects)
        colours = [c for c in COLOURS if not any(o.shape == obj.shape and o.colour == c for o in objects)]
        colours = [c for c in colours if not is_heldout_combo(c, obj.shape)]
        if not colours:
            return _count_chain(objects, rng)
        d = (None, rng.choice(colours), obj.shape)
    same_shape = sorted((o for o in objects if o.shape == d[2]), key=lambda o: o.box[0])
    steps = [_object_step(o, (None, o.colour, o.shape), objects, rng) for o in same_shape]
    words = _words(d)
    article = "an" if words[0] in "aeiou" else "a"
    steps.append(
        _Step(
            f"So there is {article} {words}." if present else f"So there is no {words}.",
            f"So there is no {words}." if present else f"So there is {article} {words}.",
            f"there is {article} {words}" if present else f"there is no {words}",
            f"Is there {article} {words}?",
            P.YES if present else P.NO,
        )
    )
    return _Chain(
        f"Is there {article} {words}?", steps, P.YES if present else P.NO, P.NO if present else P.YES
    )


def _relation_chain(a, b, actual: set[str], objects, rng) -> _Chain:
    da, db = rng.choice(_name(a, objects)), rng.choice(_name(b, objects))
    wa, wb = _words(da), _words(db)
    asked = rng.choice(RELATIONS)
    holds = asked in actual
    where = " and ".join(sorted(actual))
    other = rng.choice([r for r in RELATIONS if r not in actual])
    steps = [
        _object_step(a, da, objects, rng),
        _object_step(b, db, objects, rng),
        _Step(
            f"The {wa} is {where} the {wb}.",
            f"The {wa} is {other} the {wb}.",
            f"the {wa} is {where} the {wb}",
            f"Where is the {wa} relative to the {wb}?",
            where,
        ),
    ]
    yes_no = P.YES if holds else P.NO
    return _Chain(f"Is the {wa} {asked} the {wb}?", steps, yes_no, P.NO if holds else P.YES)


def _colour_chain(obj, d, objects, rng) -> _Chain:
    wrong = rng.choice([c for c in COLOURS if c != obj.colour])
    words = _words(d)
    steps = [
        _object_step(obj, d, objects, rng),
        _Step(
            f"It is {obj.colour}.",
            f"It is {wrong}.",
            f"it is {obj.colour}",
            f"What colour is the {words}?",
            obj.colour,
        ),
    ]
    return _Chain(f"What colour is the {words}?", steps, obj.colour, wrong)


def _object_step(obj, d, objects, rng) -> _Step:
    """``There is a red circle at [..].``; wrong: the box of a far-away place, or another colour."""
    words = _words(d)
    article = "an" if words[0] in "aeiou" else "a"
    box = format_box(obj.box)
    wrong_query = wrong_query_answer = None
    if rng.random() < 0.5 and d[1] is not None:
        others = [c for c in COLOURS if c != d[1] and not is_heldout_combo(c, obj.shape)]
        colour = rng.choice(others)
        wrong_words = _words((d[0], colour, d[2]))
        wrong = f"There is {'an' if wrong_words[0] in 'aeiou' else 'a'} {wrong_words} at {box}."
        explanation = f"the {obj.shape} at {box} is {d[1]}, not {colour}"
        # LookBack checks the step it is shown: where is the object it names (mostly nowhere)?
        wrong_query = grounding_prompt(wrong_words)
        wrong_query_answer = grounding_answer([o.box for o in objects if _fits((d[0], colour, d[2]), o)])
    else:
        x0, y0, x1, y1 = obj.box
        dx = 0.35 if x0 < 0.5 else -0.35
        dy = 0.3 if y0 < 0.5 else -0.3
        moved = format_box((x0 + dx, y0 + dy, x1 + dx, y1 + dy))
        wrong = f"There is {article} {words} at {moved}."
        explanation = f"the {words} is at {box}"
    return _Step(
        f"There is {article} {words} at {box}.",
        wrong,
        explanation,
        grounding_prompt(words),
        grounding_answer([o.box for o in objects if _fits(d, o)]),
        wrong_query,
        wrong_query_answer,
    )


# ---------------------------------------------------------------------------------------------
# Helpers


def located_answer(a: str, box_a, relation: str, b: str, box_b, holds: set[str]) -> str:
    """The answer to "is the {a} {relation} the {b}? Find both objects first." (:data:`P.LOCATED`).

    Along the relation's axis, both centres (percent of the image side), the relation their order
    makes, then Yes when ``relation`` is one of ``holds`` (the world's rule,
    :func:`~selfcorrect.world.scene.relative_position`). Only asked of a relation that holds or
    of its opposite, where the centres' order and the rule agree.
    """
    axis, side, before, after = (
        (0, "left", "left of", "right of")
        if relation in ("left of", "right of")
        else (1, "top", "above", "below")
    )
    pa, pb = (round((box[axis] + box[axis + 2]) * 50) for box in (box_a, box_b))
    said = before if (box_a[axis] + box_a[axis + 2]) < (box_b[axis] + box_b[axis + 2]) else after
    answer = P.YES if relation in holds else P.NO
    return P.LOCATED.format(side=side, a=a, pa=pa, b=b, pb=pb, relation=said, answer=answer)


def _messages(turns: list[tuple[str, str]], n_images: int) -> list[dict]:
    messages = []
    for k, (user, assistant) in enumerate(turns):
        content = [{"type": "image"}] * n_images if k == 0 else []
        messages.append({"role": "user", "content": [*content, {"type": "text", "text": user}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": assistant}]})
    return messages


def _usable(truth) -> bool:
    """Every object read completely and none of a held-out combination."""
    return all(
        d.shape is not None
        and d.colour is not None
        and d.size is not None
        and not is_heldout_combo(d.colour, d.shape)
        for d in truth
    ) and bool(truth)


def _as_object(d) -> WorldObject:
    return d if isinstance(d, WorldObject) else WorldObject(d.shape, d.colour, d.size, tuple(d.box))


def _recoloured(scene: Scene) -> Scene:
    """Held-out (colour, shape) objects recoloured, as :class:`~selfcorrect.world.data.WorldDataset` does."""
    rng = random.Random(scene.seed)
    return scene.with_objects(
        replace(o, colour=rng.choice([c for c in COLOURS if not is_heldout_combo(c, o.shape)]))
        if is_heldout_combo(o.colour, o.shape)
        else o
        for o in scene.objects
    )


def _all_pass(scene: Scene, requirements) -> bool:
    return all(r.passed for r in evaluate(scene.objects, requirements))


def _fits(d, obj) -> bool:
    size, colour, shape = d
    return (
        (size is None or obj.size == size) and (colour is None or obj.colour == colour) and obj.shape == shape
    )


def _name(obj, objects) -> list:
    return [d for d in _descriptions(obj) if _unique(d, objects)]


def _absent_phrase(objects, rng) -> str:
    options = [
        (None, c, s)
        for c in COLOURS
        for s in {o.shape for o in objects} | {"circle", "square", "triangle", "cross"}
        if not is_heldout_combo(c, s) and not any(o.colour == c and o.shape == s for o in objects)
    ]
    return _words(rng.choice(options))


def _caption_or_negative(scene: Scene, rng: random.Random) -> tuple[str, bool]:
    """A true caption of ``scene`` in a random style, or (half the time) one of its hard negatives."""
    style = rng.choice(CAPTION_STYLES)
    text = caption(scene, style, rng)
    if rng.random() < 0.5:
        negatives = hard_negatives(scene, text, n=4, rng=rng)
        if negatives:
            return rng.choice(negatives).text, False
    return text, True


def _wrong_answer(item, rng: random.Random) -> str:
    """A wrong answer of the right type for a world question."""
    truth = item.answer
    if item.kind in ("existence", "relation"):
        return answer_text("no" if truth == "yes" else "yes")
    if item.kind == "count":
        n = int(truth)
        return str(rng.choice([m for m in (n - 1, n + 1, n + 2) if m >= 0]))
    options = {
        "colour": COLOURS,
        "shape": ("circle", "square", "triangle", "cross"),
        "where": RELATIONS,
    }[item.kind]
    return rng.choice([o for o in options if o != truth])
