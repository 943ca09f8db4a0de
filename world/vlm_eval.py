"""Evaluate the world VLM (and the world CLIP) on scenes it was not trained on (issue 4).

Five measurements, each graded against the world's exact truth:

1. **VQA accuracy per question kind** (:data:`~selfcorrect.world.data.QA_KINDS`) on three image
   sources. Questions come from :func:`~selfcorrect.world.data.scene_qa`, are sent as
   :func:`~selfcorrect.world.conversations.vqa_prompt` through ``vlm.chat`` (greedy, short), and an
   answer is right when it equals :func:`~selfcorrect.world.conversations.answer_text` of the truth
   after stripping whitespace and a trailing period, ignoring case (:func:`is_right`).
2. **Grounding** at IoU >= 0.5: for each object, ``grounding_prompt(phrase)`` with the shortest
   phrase that names it alone (:func:`grounding_phrase`); the answer's boxes are read with
   :func:`~selfcorrect.world.conversations.parse_boxes`. An object is recalled when some predicted
   box has IoU >= 0.5 with it; a predicted box is correct when it is matched one-to-one (greedily,
   highest IoU first) to an object the phrase names, so duplicate boxes count against precision.
   **Relations from boxes** (:func:`evaluate_grounded_relations`, reported as ``boxed``): each
   relation question answered by grounding both of its objects and applying the world's rule to
   the boxes, which tells perception apart from the language model's composition.
3. **CLIP**: image -> its true caption among 10 hard negatives
   (:func:`selfcorrect.train.world_clip.evaluate_hard_negatives`), when CLIP weights are given.
4. **Image reliance** on the renders (:func:`measure_image_reliance`): the log-probability of
   each true answer with its own image and with another scene's, a probe of whether the model
   reads the image at all.
5. **Throughput**: images per second of ``vlm.score`` (P(Yes) vs P(No) after the question, one
   forward pass, no decoding) against ``vlm.chat`` (greedy generation) on the same yes/no questions
   (existence, relation) about the same renders, with how often the two agree.

Which images, and where their truth comes from (never from a model):

* ``render``: :class:`~selfcorrect.world.data.WorldDataset` scenes with
  ``seed=SPLIT_SEEDS[split]`` (train 0, val 1, test 2), so test scenes are other draws of the same
  scene distribution than the training conversations, which use seed 0; object positions are
  continuous, so a test scene repeating a training scene has probability ~0. ``exclude_heldout``
  is left on (as in training): held-out (colour, shape) combinations are recoloured and never
  asked about, so the numbers measure new scenes, not new attribute combinations. Truth: the
  scene spec.
* ``degraded``: the same scenes through :func:`~selfcorrect.world.degrade.degrade` (a random mix
  of the degradations a small diffusion model shows). Truth: the degradation's own ground truth.
  An image is skipped (and counted in ``skipped``) when that truth has an object that cannot be
  read completely (a merged blob, a two-colour object) or is empty (pure noise), exactly the
  images the training data keeps out of perception tasks.
* ``generated``: images of the world text-to-image model for prompts of the split's suite.
  Truth: what the oracle reads in them (:func:`~selfcorrect.world.oracle.analyse`); an image is
  kept only when the reading is complete (every object's shape, colour and size read, at least one
  object, no held-out combination). Its numbers inherit the oracle's own small error rate
  (``benchmarks/results/oracle_selftest.md``).

Example::

    vlm = VLM.from_pretrained("world")
    result = evaluate_vlm(vlm, split="test", limit=50, generated=0)
    print(markdown_table(result))
"""

from __future__ import annotations

import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from selfcorrect.critics import prompts as P
from selfcorrect.world.conversations import (
    SPLIT_SEEDS,
    _as_object,
    _usable,
    answer_text,
    grounding_prompt,
    parse_boxes,
    vqa_prompt,
)
from selfcorrect.world.data import (
    QA,
    QA_KINDS,
    WorldDataset,
    _derive,
    _unique,
    _words,
    relation_parts,
    scene_qa,
)
from selfcorrect.world.degrade import degrade
from selfcorrect.world.scene import DEFAULT_CANVAS, Scene, relative_position
from selfcorrect.world.suites import load_suite

SOURCES: tuple[str, ...] = ("render", "degraded", "generated")
YES_NO_KINDS: tuple[str, ...] = ("existence", "relation")  # the kinds answered Yes / No
IOU_THRESHOLD = 0.5
VQA_MAX_NEW_TOKENS = 8  # the longest world answer ("right of", a colour) is a few tokens
GROUND_MAX_NEW_TOKENS = 96  # a few boxes "[12, 34, 56, 78]" (one phrase names at most 5 objects)
# Targets of issue 4, printed next to the measured numbers.
TARGETS: dict[str, float] = {
    "vqa/existence": 0.95,
    "vqa/colour": 0.95,
    "vqa/shape": 0.95,
    "vqa/count": 0.90,
    "vqa/relation": 0.90,
    "grounding/recall": 0.90,
    "clip/accuracy": 0.85,
}

# (prompts, seeds) -> one PIL image per pair, as in :mod:`selfcorrect.world.t2i_eval`
GenerateFn = Callable[[list[str], list[int]], list]


@dataclass
class Sample:
    """One evaluation image with its truth.

    Attributes:
        source: one of :data:`SOURCES`.
        index: the scene index (render, degraded) or the generation seed (generated).
        image: RGB ``PIL.Image``.
        objects: the objects really in it (``WorldObject``), from the scene, the degradation or
            the oracle.
        qa: verified questions about ``objects``.
        prompt: the prompt it was generated from (generated images only).
    """

    source: str
    index: int
    image: object
    objects: list
    qa: list[QA] = field(default_factory=list)
    prompt: str | None = None


# ---------------------------------------------------------------------------------------------
# Grading


def normalise_answer(text: str) -> str:
    """``" Yes. "`` -> ``"yes"``: whitespace and trailing periods stripped, lower case."""
    return text.strip().rstrip(".").strip().lower()


def is_right(answer: str, expected: str) -> bool:
    """True when a model's ``answer`` says the world answer ``expected`` (``"yes"``, ``"2"``, ``"red"``)."""
    return normalise_answer(answer) == normalise_answer(answer_text(expected))


def box_iou(a, b) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when either is empty)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(predicted, truth, threshold: float = IOU_THRESHOLD) -> tuple[int, int]:
    """How well ``predicted`` boxes find the ``truth`` boxes.

    Returns:
        ``(recalled, correct)``: the number of true boxes that some predicted box overlaps with
        IoU >= ``threshold``, and the number of predicted boxes matched one-to-one to a true box
        (greedily, highest IoU first) with IoU >= ``threshold``.
    """
    recalled = sum(any(box_iou(p, t) >= threshold for p in predicted) for t in truth)
    pairs = sorted(
        ((box_iou(p, t), i, j) for i, p in enumerate(predicted) for j, t in enumerate(truth)), reverse=True
    )
    used_p, used_t = set(), set()
    for iou, i, j in pairs:
        if iou < threshold:
            break
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return recalled, len(used_p)


def grounding_phrase(obj, objects) -> tuple[str, list]:
    """The phrase that asks for ``obj``, and the boxes of every object it names.

    The phrase is colour + shape when that names ``obj`` alone, else size + colour + shape; when
    even that fits several objects (twins), all of them are the answer.
    """
    colour_shape = (None, obj.colour, obj.shape)
    d = colour_shape if _unique(colour_shape, objects) else (obj.size, obj.colour, obj.shape)
    size, colour, shape = d
    boxes = [
        o.box for o in objects if o.shape == shape and o.colour == colour and (size is None or o.size == size)
    ]
    return _words(d), boxes


# ---------------------------------------------------------------------------------------------
# Images


def rendered_samples(split: str, n: int, canvas: int = DEFAULT_CANVAS) -> list[Sample]:
    """The first ``n`` scenes of ``split`` rendered plainly, with their questions."""
    dataset = WorldDataset(n, seed=_split_seed(split), canvas=canvas, caption_styles=())
    samples = []
    for i in range(n):
        item = dataset[i]
        samples.append(Sample("render", i, item["image"], list(item["scene"].objects), item["qa"]))
    return samples


def degraded_samples(split: str, n: int, canvas: int = DEFAULT_CANVAS) -> tuple[list[Sample], int]:
    """The same scenes as :func:`rendered_samples`, degraded; ``(samples, skipped)``.

    Images whose ground truth is empty or has an object that cannot be read completely are
    skipped (see the module docstring).
    """
    seed = _split_seed(split)
    dataset = WorldDataset(n, seed=seed, canvas=canvas, caption_styles=())
    samples, skipped = [], 0
    for i in range(n):
        image, truth = degrade(dataset.scene(i), _derive(seed, i, "vlm-eval:degrade"), size=canvas)
        if not _usable(truth):
            skipped += 1
            continue
        objects = [_as_object(d) for d in truth]
        qa = scene_qa(Scene(tuple(objects)), random.Random(_derive(seed, i, "vlm-eval:qa")))
        samples.append(Sample("degraded", i, image, objects, qa))
    return samples, skipped


def generated_samples(
    generate_fn: GenerateFn, split: str, n: int, *, chunk: int = 32, progress: bool = True
) -> tuple[list[Sample], int]:
    """``n`` images of a text-to-image model for prompts of ``split``, labelled by the oracle.

    Prompts are a seeded sample of the split's suite (across categories; repeated when ``n`` is
    larger than the suite); image ``i`` is generated with seed ``i``. Only images whose oracle
    reading is complete are kept.

    Returns:
        ``(samples, skipped)``.
    """
    from tqdm.auto import tqdm

    from selfcorrect.world.oracle import analyse

    seed = _split_seed(split)
    suite = [p.prompt for p in load_suite(split)]
    rng = random.Random(f"vlm-eval:{split}:generated")
    prompts = []
    while len(prompts) < n:
        prompts += rng.sample(suite, min(len(suite), n - len(prompts)))
    samples, skipped = [], 0
    bar = tqdm(total=n, desc="generate + oracle", disable=not progress)
    for start in range(0, n, chunk):
        part = prompts[start : start + chunk]
        seeds = list(range(start, start + len(part)))
        for prompt, s, image in zip(part, seeds, generate_fn(part, seeds), strict=True):
            truth = analyse(image)
            if not _usable(truth):
                skipped += 1
                continue
            objects = [_as_object(d) for d in truth]
            qa = scene_qa(Scene(tuple(objects)), random.Random(_derive(seed, s, "vlm-eval:qa:generated")))
            samples.append(Sample("generated", s, image.convert("RGB"), objects, qa, prompt))
        bar.update(len(part))
    bar.close()
    return samples, skipped


def _split_seed(split: str) -> int:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLIT_SEEDS)}")
    return SPLIT_SEEDS[split]


# ---------------------------------------------------------------------------------------------
# Measurements


def evaluate_vqa(
    vlm,
    samples: list[Sample],
    *,
    batch_size: int = 16,
    max_new_tokens: int = VQA_MAX_NEW_TOKENS,
    progress: bool = True,
    desc: str = "vqa",
) -> tuple[dict, list[dict]]:
    """Ask every question of every sample through ``vlm.chat`` and grade the answers.

    Args:
        vlm: a :class:`~selfcorrect.vision.vlm.VLM` (or anything with its ``chat``).
        samples: images with their questions.
        batch_size: conversations per ``generate`` call.

    Returns:
        ``(summary, records)``: ``summary`` has ``kinds`` (``{kind: {"accuracy", "n"}}`` for the
        kinds asked), ``overall`` (mean of the kind accuracies) and ``questions``; one record per
        question (source, index, kind, question, expected, answer, right).
    """
    jobs = [(s, qa) for s in samples for qa in s.qa]
    answers = _chat(
        vlm,
        [s.image for s, _ in jobs],
        [vqa_prompt(qa.question) for _, qa in jobs],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    records = [
        {
            "source": s.source,
            "index": s.index,
            "kind": qa.kind,
            "question": vqa_prompt(qa.question),
            "expected": answer_text(qa.answer),
            "answer": answer,
            "right": is_right(answer, qa.answer),
        }
        for (s, qa), answer in zip(jobs, answers, strict=True)
    ]
    kinds = {}
    for kind in QA_KINDS:
        rows = [r["right"] for r in records if r["kind"] == kind]
        if rows:
            kinds[kind] = {"accuracy": round(sum(rows) / len(rows), 4), "n": len(rows)}
    overall = sum(k["accuracy"] for k in kinds.values()) / len(kinds) if kinds else 0.0
    return {"kinds": kinds, "overall": round(overall, 4), "questions": len(records)}, records


def evaluate_grounding(
    vlm,
    samples: list[Sample],
    *,
    batch_size: int = 16,
    max_new_tokens: int = GROUND_MAX_NEW_TOKENS,
    progress: bool = True,
    desc: str = "grounding",
) -> tuple[dict, list[dict]]:
    """Ask for every object of every sample by phrase and match the returned boxes (IoU >= 0.5).

    Each distinct phrase of an image is asked once; its truth is every object it names.

    Returns:
        ``(summary, records)``: ``summary`` has ``recall`` (objects recalled / objects),
        ``precision`` (correct boxes / predicted boxes, 0 when none were predicted), ``objects``,
        ``predicted_boxes``, ``questions`` and ``unparsed`` (answers with no box in them); one
        record per question (source, index, phrase, truth boxes, answer, recalled, correct).
    """
    jobs = []  # (sample, phrase, truth boxes)
    for s in samples:
        asked = {}
        for obj in s.objects:
            phrase, boxes = grounding_phrase(obj, s.objects)
            asked.setdefault(phrase, boxes)
        jobs += [(s, phrase, boxes) for phrase, boxes in asked.items()]
    answers = _chat(
        vlm,
        [s.image for s, _, _ in jobs],
        [grounding_prompt(phrase) for _, phrase, _ in jobs],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    records, objects, recalled, predicted, correct = [], 0, 0, 0, 0
    for (s, phrase, truth), answer in zip(jobs, answers, strict=True):
        boxes = parse_boxes(answer)
        r, c = match_boxes(boxes, truth)
        objects, recalled, predicted, correct = (
            objects + len(truth),
            recalled + r,
            predicted + len(boxes),
            correct + c,
        )
        records.append(
            {
                "source": s.source,
                "index": s.index,
                "phrase": phrase,
                "truth": [[round(v, 4) for v in b] for b in truth],
                "answer": answer,
                "recalled": r,
                "correct": c,
            }
        )
    summary = {
        "recall": round(recalled / objects, 4) if objects else 0.0,
        "precision": round(correct / predicted, 4) if predicted else 0.0,
        "objects": objects,
        "predicted_boxes": predicted,
        "questions": len(records),
        "unparsed": sum(not parse_boxes(r["answer"]) for r in records),
    }
    return summary, records


def evaluate_grounded_relations(
    vlm,
    samples: list[Sample],
    *,
    batch_size: int = 16,
    max_new_tokens: int = GROUND_MAX_NEW_TOKENS,
    progress: bool = True,
    desc: str = "relation from boxes",
) -> tuple[dict, list[dict]]:
    """Answer every relation question from the VLM's own grounding instead of asking it.

    Both objects of ``"is the A left of the B?"`` are found with ``grounding_prompt`` (each
    distinct phrase of an image asked once); the answer is Yes when the world's rule
    (:func:`~selfcorrect.world.scene.relative_position`) puts the first box of A ``left of`` the
    first box of B, and No when it does not or a phrase got no box. This separates what the model
    sees (where each object is) from what its language model composes (:func:`evaluate_vqa`).

    Returns:
        ``(summary, records)``: ``summary`` has ``accuracy``, ``n`` and ``missing`` (questions
        with a phrase that got no box); one record per question (source, index, question,
        expected, boxes of A and B, answer, right).
    """
    jobs = [(s, qa, relation_parts(qa.question)) for s in samples for qa in s.qa if qa.kind == "relation"]
    asks = list(dict.fromkeys((id(s), phrase) for s, _, (a, _, b) in jobs for phrase in (a, b)))
    by_id = {id(s): s for s, _, _ in jobs}
    answers = _chat(
        vlm,
        [by_id[k].image for k, _ in asks],
        [grounding_prompt(phrase) for _, phrase in asks],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    boxes = {ask: parse_boxes(answer) for ask, answer in zip(asks, answers, strict=True)}
    records = []
    for s, qa, (a, relation, b) in jobs:
        found_a, found_b = boxes[id(s), a], boxes[id(s), b]
        said = bool(found_a and found_b) and relation in relative_position(found_a[0], found_b[0])
        records.append(
            {
                "source": s.source,
                "index": s.index,
                "question": vqa_prompt(qa.question),
                "expected": answer_text(qa.answer),
                "boxes": [[list(b) for b in found_a], [list(b) for b in found_b]],
                "answer": P.YES if said else P.NO,
                "right": said == (qa.answer == "yes"),
            }
        )
    summary = {
        "accuracy": round(sum(r["right"] for r in records) / len(records), 4) if records else 0.0,
        "n": len(records),
        "missing": sum(not (r["boxes"][0] and r["boxes"][1]) for r in records),
    }
    return summary, records


def measure_throughput(vlm, samples: list[Sample], *, batch_size: int = 16) -> dict:
    """Images per second of ``vlm.score`` (P(Yes) vs P(No)) against ``vlm.chat`` on yes/no questions.

    Both paths get the same prompts about the same images in one call each (so each image is
    encoded once per path), after a small untimed warm-up. ``chat`` decodes greedily for at most
    :data:`VQA_MAX_NEW_TOKENS` tokens (a trained model stops after ``Yes``/``No`` and its
    end-of-turn token).

    Returns:
        ``{"images", "questions", "score": {...}, "chat": {...}, "speedup", "agreement"}``; each
        path has ``seconds``, ``images_per_second``, ``questions_per_second`` and ``accuracy``;
        ``agreement`` is the share of questions where chat's answer is the one score prefers.
    """
    jobs = [(s, qa) for s in samples for qa in s.qa if qa.kind in YES_NO_KINDS]
    if not jobs:
        raise ValueError("no yes/no questions to time")
    images = [s.image for s, _ in jobs]
    prompts = [vqa_prompt(qa.question) for _, qa in jobs]
    warm = min(2, len(jobs))
    vlm.score(images[:warm], prompts[:warm], [P.YES, P.NO], batch_size=batch_size)
    vlm.chat(images[:warm], prompts[:warm], max_new_tokens=VQA_MAX_NEW_TOKENS, batch_size=batch_size)

    started = time.perf_counter()
    logp = vlm.score(images, prompts, [P.YES, P.NO], batch_size=batch_size)  # (Q, 2)
    score_seconds = time.perf_counter() - started
    scored = [P.YES if yes > no else P.NO for yes, no in logp.tolist()]

    started = time.perf_counter()
    chatted = vlm.chat(images, prompts, max_new_tokens=VQA_MAX_NEW_TOKENS, batch_size=batch_size)
    chat_seconds = time.perf_counter() - started

    n_images = len({id(s) for s, _ in jobs})

    def path(seconds: float, answers: list[str]) -> dict:
        right = sum(is_right(a, qa.answer) for a, (_, qa) in zip(answers, jobs, strict=True))
        return {
            "seconds": round(seconds, 3),
            "images_per_second": round(n_images / max(seconds, 1e-9), 2),
            "questions_per_second": round(len(jobs) / max(seconds, 1e-9), 2),
            "accuracy": round(right / len(jobs), 4),
        }

    agree = sum(normalise_answer(c) == normalise_answer(s) for c, s in zip(chatted, scored, strict=True))
    return {
        "images": n_images,
        "questions": len(jobs),
        "batch_size": batch_size,
        "score": path(score_seconds, scored),
        "chat": path(chat_seconds, chatted),
        "speedup": round(chat_seconds / max(score_seconds, 1e-9), 2),
        "agreement": round(agree / len(jobs), 4),
    }


def measure_image_reliance(vlm, samples: list[Sample], *, batch_size: int = 16) -> dict:
    """How much the VLM's answers depend on the image it is shown.

    Every question of every sample is scored twice with ``vlm.score`` (no decoding): the
    log-probability of its true answer after the sample's own image, and after the next sample's
    image (another scene). A model that answers from priors alone scores both the same; one that
    reads the image gives its own image's answer more probability. Graded exact match hides this
    while a model is still learning to see (its greedy answer can stay the prior's).

    Returns:
        ``{"questions", "own_image", "other_image", "gap", "own_more_likely"}``: the mean negative
        log-likelihood (nats per answer) of the true answers with each image, their difference
        (``other_image - own_image``), and the share of questions whose true answer is more
        likely with its own image.
    """
    if len(samples) < 2:
        raise ValueError("image reliance needs at least 2 images (each is shown with another's)")
    jobs = [(k, qa) for k, s in enumerate(samples) for qa in s.qa]
    prompts = [vqa_prompt(qa.question) for _, qa in jobs]
    answers = [[answer_text(qa.answer)] for _, qa in jobs]
    own = vlm.score([samples[k].image for k, _ in jobs], prompts, answers, batch_size=batch_size)[:, 0]
    other_images = [samples[(k + 1) % len(samples)].image for k, _ in jobs]
    other = vlm.score(other_images, prompts, answers, batch_size=batch_size)[:, 0]
    return {
        "questions": len(jobs),
        "own_image": round(-own.mean().item(), 4),
        "other_image": round(-other.mean().item(), 4),
        "gap": round((own - other).mean().item(), 4),
        "own_more_likely": round((own > other).float().mean().item(), 4),
    }


def evaluate_clip(clip, split: str = "test", limit: int | None = None) -> dict:
    """Hard-negative accuracy of an open_clip model (``(model, preprocess, tokenizer)``) on ``split``.

    Thin wrapper over :func:`selfcorrect.train.world_clip.evaluate_hard_negatives` (the one the
    CLIP's training reports and ``benchmarks/clip_hard_negatives.py`` uses), so all three agree.
    """
    import torch

    from selfcorrect.train.world_clip import evaluate_hard_negatives

    model, preprocess, tokenizer = clip
    with torch.no_grad():
        return evaluate_hard_negatives(model, preprocess, tokenizer, split=split, limit=limit)


def _chat(vlm, images, prompts, *, max_new_tokens, batch_size, progress, desc) -> list[str]:
    """``vlm.chat`` over many prompts in chunks of a few batches, with a progress bar.

    Prompts about one image are adjacent, so a chunk mostly encodes each of its images once.
    """
    from tqdm.auto import tqdm

    answers = []
    chunk = 4 * batch_size
    with tqdm(total=len(prompts), desc=desc, disable=not progress) as bar:
        for start in range(0, len(prompts), chunk):
            answers += vlm.chat(
                images[start : start + chunk],
                prompts[start : start + chunk],
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
            )
            bar.update(len(prompts[start : start + chunk]))
    return answers


# ---------------------------------------------------------------------------------------------
# The whole evaluation


def evaluate_vlm(
    vlm,
    *,
    split: str = "test",
    limit: int = 200,
    generate_fn: GenerateFn | None = None,
    generated: int = 64,
    clip=None,
    clip_note: str | None = None,
    throughput_images: int = 32,
    batch_size: int = 16,
    ground_max_new_tokens: int = GROUND_MAX_NEW_TOKENS,
    canvas: int = DEFAULT_CANVAS,
    progress: bool = True,
) -> dict:
    """Run the five measurements of the module docstring.

    Args:
        vlm: a :class:`~selfcorrect.vision.vlm.VLM` (anything with its ``chat`` and ``score``).
        split: ``train``, ``val`` or ``test``: the scene seed and the prompt suite.
        limit: scenes for the ``render`` and ``degraded`` sources (degraded ones may be skipped).
        generate_fn: ``(prompts, seeds) -> images`` of a text-to-image model; None (or
            ``generated=0``) leaves the ``generated`` source out.
        generated: images to generate (fewer are kept: only complete oracle readings).
        clip: ``(model, preprocess, tokenizer)`` of an open_clip model, or None to skip CLIP.
        clip_note: why CLIP was skipped, recorded in the result.
        throughput_images: renders (the first ones) whose yes/no questions are timed; 0 skips it.
        batch_size: prompts per VLM batch.
        ground_max_new_tokens: the most tokens of a grounding answer.
        canvas: image side in pixels.

    Returns:
        A JSON-ready dict: ``split``, ``limit``, ``images`` (per source: ``used``, ``skipped``),
        ``vqa``, ``grounding`` and ``boxed`` (per source, see :func:`evaluate_vqa`,
        :func:`evaluate_grounding` and :func:`evaluate_grounded_relations`), ``image_reliance`` (renders, see
        :func:`measure_image_reliance`; ``{"skipped": reason}`` with fewer than 2), ``clip`` (or
        ``{"skipped": reason}``), ``throughput`` (see :func:`measure_throughput`), ``targets``, ``seconds``, ``machine``, ``date`` and ``records``
        (``vqa``, ``grounding`` and ``boxed`` lists).
    """
    import torch

    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    started = time.perf_counter()
    sources = {"render": (rendered_samples(split, limit, canvas), 0)}
    sources["degraded"] = degraded_samples(split, limit, canvas)
    if generate_fn is not None and generated > 0:
        sources["generated"] = generated_samples(generate_fn, split, generated, progress=progress)

    result: dict = {"split": split, "limit": limit, "images": {}, "vqa": {}, "grounding": {}, "boxed": {}}
    records: dict[str, list] = {"vqa": [], "grounding": [], "boxed": []}
    for name, (samples, skipped) in sources.items():
        result["images"][name] = {"used": len(samples), "skipped": skipped}
        if not samples:
            continue
        summary, rows = evaluate_vqa(
            vlm, samples, batch_size=batch_size, progress=progress, desc=f"vqa {name}"
        )
        result["vqa"][name] = summary
        records["vqa"] += rows
        summary, rows = evaluate_grounding(
            vlm,
            samples,
            batch_size=batch_size,
            max_new_tokens=ground_max_new_tokens,
            progress=progress,
            desc=f"grounding {name}",
        )
        result["grounding"][name] = summary
        records["grounding"] += rows
        summary, rows = evaluate_grounded_relations(
            vlm,
            samples,
            batch_size=batch_size,
            max_new_tokens=ground_max_new_tokens,
            progress=progress,
            desc=f"relation from boxes {name}",
        )
        result["boxed"][name] = summary
        records["boxed"] += rows

    if clip is not None:
        result["clip"] = evaluate_clip(clip, split, limit)
    else:
        result["clip"] = {"skipped": clip_note or "no CLIP model given"}
    renders = sources["render"][0]
    if len(renders) >= 2:
        result["image_reliance"] = measure_image_reliance(vlm, renders, batch_size=batch_size)
    else:
        result["image_reliance"] = {"skipped": "needs at least 2 renders (--limit 2)"}
    if throughput_images > 0:
        result["throughput"] = measure_throughput(vlm, renders[:throughput_images], batch_size=batch_size)
    result["targets"] = dict(TARGETS)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["machine"] = {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result["records"] = records
    return result


# ---------------------------------------------------------------------------------------------
# Report


def markdown_table(result: dict) -> str:
    """The results as Markdown tables (VQA, grounding, CLIP, throughput), with the targets."""

    def cell(value, target=None) -> str:
        if value is None:
            return "–"
        mark = "" if target is None else (" ✓" if value >= target else " ✗")
        return f"{value:.2f}{mark}"

    kinds = list(QA_KINDS)
    lines = [
        "**VQA accuracy** (greedy `chat`, exact answer)\n",
        "| images | n | " + " | ".join(kinds) + " | mean |",
        "|---|---:|" + "---:|" * (len(kinds) + 1),
    ]
    for name, part in result["vqa"].items():
        values = [part["kinds"].get(k, {}).get("accuracy") for k in kinds]
        cells = [cell(v, TARGETS.get(f"vqa/{k}")) for k, v in zip(kinds, values)]
        used = result["images"][name]["used"]
        lines.append(f"| {name} | {used} | " + " | ".join(cells) + f" | {part['overall']:.2f} |")
    targets = [f"≥ {TARGETS[f'vqa/{k}']:.2f}" if f"vqa/{k}" in TARGETS else "–" for k in kinds]
    lines.append("| target | | " + " | ".join(targets) + " | |")

    lines += [
        "",
        f"**Grounding** (IoU ≥ {IOU_THRESHOLD}; target recall ≥ {TARGETS['grounding/recall']:.2f})\n",
        "| images | objects | recall | precision | boxes predicted | answers without a box |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, g in result["grounding"].items():
        lines.append(
            f"| {name} | {g['objects']} | {cell(g['recall'], TARGETS['grounding/recall'])} | "
            f"{g['precision']:.2f} | {g['predicted_boxes']} | {g['unparsed']} |"
        )

    if result.get("boxed"):
        lines += [
            "",
            "**Relations from the VLM's boxes** (each relation question answered by grounding both "
            "objects and applying the world's rule to the first box of each; not the VLM's own answer)\n",
            "| images | questions | accuracy | a phrase got no box |",
            "|---|---:|---:|---:|",
        ]
        for name, part in result["boxed"].items():
            lines.append(f"| {name} | {part['n']} | {part['accuracy']:.2f} | {part['missing']} |")

    reliance = result.get("image_reliance", {})
    if "skipped" in reliance:
        lines += ["", f"**Image reliance** skipped: {reliance['skipped']}"]
    elif reliance:
        lines += [
            "",
            f"**Image reliance** ({reliance['questions']} questions about the renders; log-probability "
            "of the true answer with the scene's own image and with another scene's)\n",
            "| own image (nats) | other image (nats) | gap | true answer likelier with its own image |",
            "|---:|---:|---:|---:|",
            f"| {reliance['own_image']:.3f} | {reliance['other_image']:.3f} | {reliance['gap']:.3f} | "
            f"{reliance['own_more_likely']:.0%} |",
        ]

    clip = result["clip"]
    lines += ["", f"**CLIP hard negatives** (target ≥ {TARGETS['clip/accuracy']:.2f})\n"]
    if "skipped" in clip:
        lines.append(f"skipped: {clip['skipped']}")
    else:
        lines += [
            "| scenes | negatives per scene | accuracy |",
            "|---:|---:|---:|",
            f"| {clip['scenes']} | {clip['negatives_per_scene']} | {cell(clip['accuracy'], TARGETS['clip/accuracy'])} |",
        ]

    if "throughput" in result:
        t = result["throughput"]
        lines += [
            "",
            f"**Throughput**: {t['questions']} yes/no questions about {t['images']} renders, batch {t['batch_size']}\n",
            "| path | images/s | questions/s | accuracy |",
            "|---|---:|---:|---:|",
            f"| score (P(Yes) vs P(No)) | {t['score']['images_per_second']:.2f} | "
            f"{t['score']['questions_per_second']:.2f} | {t['score']['accuracy']:.2f} |",
            f"| chat (greedy) | {t['chat']['images_per_second']:.2f} | "
            f"{t['chat']['questions_per_second']:.2f} | {t['chat']['accuracy']:.2f} |",
            "",
            f"score is {t['speedup']:.1f}x faster than chat; they agree on {t['agreement']:.0%} of the questions.",
        ]
    skipped = {n: i["skipped"] for n, i in result["images"].items() if i["skipped"]}
    if skipped:
        lines += [
            "",
            "Skipped images (truth not completely readable): "
            + ", ".join(f"{n} {k}" for n, k in skipped.items()),
        ]
    return "\n".join(lines) + "\n"
