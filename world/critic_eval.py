"""Meta-evaluation of the critics against the oracle (issue 5, section 4): ``selfcorrect eval critics``.

A critic is only as useful as its agreement with the truth. Here the truth is the world's exact
checker, and every critic is graded against it on images and reasoning chains it has not seen in
training (the ``test`` split by default). What is measured:

1. **Pass/fail accuracy and rank correlation** of every image critic (LLaVA-Critic in log-prob
   mode and in generate-and-parse mode, the DSG-style VQA critic, CLIPScore). Truth per image:
   ``passed`` (every requirement of the prompt holds) and the **pass rate** (the fraction of the
   prompt's requirements that hold). Accuracy compares the critic's ``passed`` with the truth's
   (:func:`accuracy`, over the images the critic decided: a critic with no pass/fail rule, such
   as CLIP with ``contrast=False`` and no threshold, decides none and only its correlation is
   reported); :func:`spearman` correlates the critic's ``score`` with the pass rate. The failing
   renders are scenes of one of the prompt's hard negatives, i.e. of a one-edit variant of it,
   exactly what the CLIP critic's contrastive pass/fail asks about: its render numbers flatter
   it, its numbers on generated images do not.
2. **Pairwise accuracy** on pairs of images of one prompt whose pass rates differ (the truth
   prefers the higher): LLaVA-Critic's position-fair :meth:`compare` (both orders), the same
   comparisons read as LLaVA-Critic's DPO recipe reads them (``NAME/compare:margin``: the sign of
   P(first) - P(second), the tie left out; :func:`margin_preference`), and, for every
   pointwise critic, the preference its two scores imply (:func:`preference_of`). A tie, where the
   truth has a preference, counts as wrong (:func:`pairwise_accuracy`). The pair order is shuffled
   with a fixed seed, so a judge that always says "first" scores about one half.
3. **LookBack vs plain critique** on reasoning chains with injected errors (VISCO's step-level
   F1, positive class = an incorrect step; :func:`precision_recall_f1`): the chains of
   :mod:`selfcorrect.world.conversations` (count, existence, colour and relation questions about a
   test-split scene, half of them with one wrong step), judged by
   :meth:`LookBackCritic.critique_steps <selfcorrect.critics.lookback.LookBackCritic.critique_steps>`
   and by its one-shot baseline :meth:`critique_plain`. A step counts as flagged only when the
   critic said it is incorrect: an unparsed verdict or a failed call flags nothing (and is
   counted), the same rule for both. The final answer gets the same three numbers. Given a
   second critic in log-prob mode (``LookBackCritic(mode="logprob")``), its two methods are
   measured too, with the threshold-free **step AUROC** of P(incorrect) = 1 - P(correct).
   ``lookback:checked`` is LookBack's verdict with its evidence also read by rule
   (:func:`selfcorrect.critics.evidence.check_verdict`, on the same trace: no more model calls).
4. **Throughput** (images per second, on the machine that runs it, warm-up excluded) of every
   critic and mode, pairs per second of ``compare``, chains per second of LookBack and plain; and
   for LLaVA-Critic the **log-prob vs generate-and-parse** ratio with the agreement of the two
   modes' verdicts (mean absolute score difference, share of equal pass/fail).
5. **TLDR** (token-level rewards, :func:`load_tldr`): token AUROC (a token is
   positive when it is part of the one edit that made a true caption false) and response
   accuracy on true captions and hard negatives of test scenes; recorded as not available, with
   the reason, when there is no TLDR critic or no weights for it.

Which images, and where their truth comes from (never from a critic):

* ``render``: for each selected prompt (:func:`select_prompts`, a seeded sample spread over the
  split's categories), a render of a scene that satisfies it and a render of a scene of one of
  its hard negatives that fails it (:func:`rendered_images`). Truth: the scene spec through
  :func:`~selfcorrect.world.requirements.evaluate`, the checker the oracle itself applies to what
  it reads (exact on renders).
* ``generated``: ``seeds`` images per prompt from the world text-to-image model (seeds 0, 1, ...,
  as ``eval t2i``), read by the oracle (:func:`~selfcorrect.world.oracle.check`); its numbers
  inherit the oracle's small error rate (``benchmarks/results/oracle_selftest.md``).

A batch goes on past a bad item: when a batched call raises, its items are judged one by one,
and an item that still fails is recorded in ``failures`` (with the error) and has no verdict;
unparsed verdicts are counted per critic. The targets of the issue are printed beside the
numbers (:data:`TARGETS`).

Example::

    critics = {"llava_critic": LlavaCritic(vlm), "vqa": VQACritic(vlm)}
    result = run("test", 20, critics=critics, step_critic=LookBackCritic(vlm))
    print(markdown_report(result))
"""

from __future__ import annotations

import difflib
import math
import platform
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from selfcorrect.world.requirements import CATEGORIES, evaluate
from selfcorrect.world.suites import SuitePrompt, load_suite

SPLITS: tuple[str, ...] = ("train", "val", "test")  # as SPLIT_SEEDS of world.conversations
SOURCES: tuple[str, ...] = ("render", "generated")
FIRST, SECOND, TIE = "first", "second", "tie"
# The targets of issue 5, printed beside the numbers. "op" says which side passes.
TARGETS: dict[str, dict] = {
    "pass_fail_accuracy": {"op": ">=", "value": 0.85, "what": "image pass/fail accuracy vs the oracle"},
    "pairwise_accuracy": {"op": ">=", "value": 0.85, "what": "pairwise accuracy vs the oracle"},
    "lookback_f1_gain": {"op": ">=", "value": 0.05, "what": "LookBack step F1 minus plain step F1"},
    "tldr_token_auroc": {"op": ">=", "value": 0.90, "what": "TLDR token AUROC"},
    "logprob_speedup": {
        "op": ">=",
        "value": 10.0,
        "what": "LLaVA-Critic log-prob images/s over generate-and-parse images/s",
    },
    "mode_score_gap": {
        "op": "<=",
        "value": 0.02,
        "what": "mean |log-prob score - generate score| of LLaVA-Critic",
    },
}
LOGPROB, GENERATE = "llava_critic", "llava_critic:generate"  # result names of the two modes

# (prompts, seeds) -> one PIL image per pair, as in world.t2i_eval and world.vlm_eval
GenerateFn = Callable[[list[str], list[int]], list]


# ---------------------------------------------------------------------------------------------
# Metrics (pure)


def accuracy(truth: Sequence[bool], predicted: Sequence[bool | None]) -> dict:
    """Share of decided predictions that equal the truth.

    Args:
        truth: per item, the true label.
        predicted: per item, the critic's label, or None when it decided nothing (unparsed, no
            threshold, failed call).

    Returns:
        ``{"accuracy", "n", "undecided"}``: ``n`` items decided, ``accuracy`` None when ``n`` is 0.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} truths for {len(predicted)} predictions")
    decided = [(bool(t), bool(p)) for t, p in zip(truth, predicted) if p is not None]
    right = sum(t == p for t, p in decided)
    return {
        "accuracy": right / len(decided) if decided else None,
        "n": len(decided),
        "undecided": len(truth) - len(decided),
    }


def majority_rate(truth: Sequence[bool]) -> float | None:
    """The accuracy of always answering the more common label (the baseline to beat)."""
    if not truth:
        return None
    passed = sum(bool(t) for t in truth)
    return max(passed, len(truth) - passed) / len(truth)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get mean ranks), or None when it is undefined.

    Undefined: fewer than two pairs, or either side constant. Computed with
    ``scipy.stats.spearmanr`` (scipy is a dependency of the oracle).
    """
    if len(x) != len(y):
        raise ValueError(f"{len(x)} values against {len(y)}")
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    from scipy.stats import spearmanr

    rho = float(spearmanr(list(x), list(y)).statistic)
    return None if math.isnan(rho) else rho


def precision_recall_f1(truth: Sequence[bool], flagged: Sequence[bool]) -> dict:
    """Precision, recall and F1 of the positive class (VISCO: an *incorrect* step or answer).

    Args:
        truth: per item, True when it is really positive (incorrect).
        flagged: per item, True when the critic said it is positive.

    Returns:
        ``{"precision", "recall", "f1", "tp", "fp", "fn", "positives", "n"}``; a ratio with a zero
        denominator is 0 (as scikit-learn's ``zero_division=0``).
    """
    if len(truth) != len(flagged):
        raise ValueError(f"{len(truth)} truths for {len(flagged)} flags")
    tp = sum(bool(t) and bool(f) for t, f in zip(truth, flagged))
    fp = sum(not t and bool(f) for t, f in zip(truth, flagged))
    fn = sum(bool(t) and not f for t, f in zip(truth, flagged))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "positives": tp + fn,
        "n": len(truth),
    }


def preference_of(a: float | None, b: float | None) -> str | None:
    """``"first"`` when ``a > b``, ``"second"`` when ``b > a``, ``"tie"`` when equal; None when
    either is missing."""
    if a is None or b is None:
        return None
    return FIRST if a > b else SECOND if b > a else TIE


def pairwise_accuracy(truth: Sequence[str], predicted: Sequence[str | None]) -> dict:
    """Share of pairs on which the judge prefers the image the truth prefers.

    Args:
        truth: per pair ``"first"`` or ``"second"`` (pairs the truth ties are not evaluated).
        predicted: per pair ``"first"``, ``"second"``, ``"tie"`` (wrong), or None (no verdict).

    Returns:
        ``{"accuracy", "n", "ties", "undecided"}``: accuracy over the ``n`` pairs with a verdict,
        None when there are none.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} truths for {len(predicted)} predictions")
    if any(t not in (FIRST, SECOND) for t in truth):
        raise ValueError("every true preference must be 'first' or 'second'")
    decided = [(t, p) for t, p in zip(truth, predicted) if p is not None]
    right = sum(t == p for t, p in decided)
    return {
        "accuracy": right / len(decided) if decided else None,
        "n": len(decided),
        "ties": sum(p == TIE for _, p in decided),
        "undecided": len(truth) - len(decided),
    }


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve: the chance that a random positive scores above a random
    negative (ties count one half); None without both classes.

    Computed from ranks (the Mann-Whitney U statistic): ``(R+ - n+(n+ + 1)/2) / (n+ n-)``, with
    ``R+`` the sum of the positives' mean ranks.
    """
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels for {len(scores)} scores")
    n_pos = sum(bool(v) for v in labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(list(scores))  # mean ranks for ties
    r_pos = sum(r for r, v in zip(ranks, labels) if v)
    return float((r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mode_agreement(first: Sequence, second: Sequence) -> dict:
    """How closely two critics' (or modes') verdicts on the same images agree.

    Args:
        first, second: per image an :class:`~selfcorrect.critics.verdicts.ImageVerdict` or None.

    Returns:
        ``{"n", "score_gap", "pass_agreement"}`` over the images both judged (not unparsed):
        the mean absolute score difference and the share with the same pass/fail (None when
        either has no pass/fail); both None when ``n`` is 0.
    """
    both = [
        (a, b)
        for a, b in zip(first, second, strict=True)
        if a is not None and b is not None and not a.unparsed and not b.unparsed
    ]
    if not both:
        return {"n": 0, "score_gap": None, "pass_agreement": None}
    gap = sum(abs(a.score - b.score) for a, b in both) / len(both)
    decided = [(a.passed, b.passed) for a, b in both if a.passed is not None and b.passed is not None]
    agree = sum(x == y for x, y in decided) / len(decided) if decided else None
    return {"n": len(both), "score_gap": gap, "pass_agreement": agree}


def meets(name: str, value: float | None) -> bool | None:
    """Whether ``value`` meets target ``name`` of :data:`TARGETS` (None when not measured)."""
    if value is None:
        return None
    target = TARGETS[name]
    return value >= target["value"] if target["op"] == ">=" else value <= target["value"]


# ---------------------------------------------------------------------------------------------
# Images and their truth


@dataclass
class JudgedImage:
    """One image to judge, with its truth.

    Attributes:
        source: ``"render"`` or ``"generated"``.
        prompt: the prompt it should show.
        category: the prompt's category.
        seed: the generation seed (generated) or the scene seed (render).
        image: RGB ``PIL.Image``.
        passed: every requirement of the prompt holds.
        pass_rate: the fraction of the prompt's requirements that hold.
        failures: the requirements that fail, with the reason.
        kind: ``"positive"`` / ``"negative"`` (renders: made to pass or to fail), ``"sample"``.
    """

    source: str
    prompt: str
    category: str
    seed: int
    image: object
    passed: bool
    pass_rate: float
    failures: list[str] = field(default_factory=list)
    kind: str = "sample"

    def label(self) -> str:
        return f"{self.source} seed {self.seed} {self.prompt!r}"


def _truth(results) -> tuple[bool, float, list[str]]:
    passed = [r.passed for r in results]
    failures = [f"{r.description}: {r.reason}" for r in results if not r.passed]
    return all(passed), sum(passed) / max(len(passed), 1), failures


def select_prompts(split: str, limit: int) -> list[SuitePrompt]:
    """``limit`` prompts of ``split``, spread over the categories (seeded; round robin over
    categories, each category's prompts shuffled once)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    rng = random.Random(f"critic-eval:{split}:prompts")
    queues = []
    for category in CATEGORIES:
        prompts = list(load_suite(split, category))
        rng.shuffle(prompts)
        queues.append(prompts)
    chosen: list[SuitePrompt] = []
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return chosen


def rendered_images(prompts: Sequence[SuitePrompt], split: str, canvas: int = 64) -> tuple[list, list]:
    """Per prompt a render that passes it and, when one can be made, a render that fails it.

    The failing scene is a scene of the first of the prompt's hard negatives
    (:func:`~selfcorrect.world.negatives.hard_negatives`) whose scene really fails the prompt
    (a scene of "three circles" still has "a circle").

    Returns:
        ``(images, failures)``; a prompt whose scenes cannot be made is a failure, not an error.
    """
    from selfcorrect.errors import PromptError
    from selfcorrect.world.grammar import parse_prompt
    from selfcorrect.world.negatives import hard_negatives
    from selfcorrect.world.render import render
    from selfcorrect.world.sampling import sample_scene

    images, failures = [], []
    for p in prompts:
        rng = random.Random(f"critic-eval:{split}:render:{p.prompt}")
        seed = rng.randrange(2**31)
        try:
            scene = sample_scene(p.requirements, seed)
        except PromptError as e:
            failures.append({"stage": "render", "item": p.prompt, "error": f"{type(e).__name__}: {e}"})
            continue
        passed, rate, failed = _truth(evaluate(scene.objects, p.requirements))
        images.append(
            JudgedImage(
                "render", p.prompt, p.category, seed, render(scene, canvas), passed, rate, failed, "positive"
            )
        )
        for negative in hard_negatives(scene, p.prompt, n=6, rng=rng):
            try:
                other = sample_scene(parse_prompt(negative.text), seed)
            except PromptError:
                continue
            passed, rate, failed = _truth(evaluate(other.objects, p.requirements))
            if not passed:
                images.append(
                    JudgedImage(
                        "render",
                        p.prompt,
                        p.category,
                        seed,
                        render(other, canvas),
                        passed,
                        rate,
                        failed,
                        "negative",
                    )
                )
                break
    return images, failures


def generated_images(
    generate_fn: GenerateFn,
    prompts: Sequence[SuitePrompt],
    seeds: int,
    *,
    chunk: int = 32,
    progress: bool = True,
) -> tuple[list, list]:
    """``seeds`` images per prompt from ``generate_fn`` (seeds 0..seeds-1), read by the oracle.

    Returns:
        ``(images, failures)``; a chunk that fails to generate is recorded and skipped.
    """
    from tqdm.auto import tqdm

    from selfcorrect.world.oracle import check

    jobs = [(p, s) for p in prompts for s in range(seeds)]
    images, failures = [], []
    with tqdm(total=len(jobs), desc="generate + oracle", disable=not progress) as bar:
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]
            try:
                made = generate_fn([p.prompt for p, _ in part], [s for _, s in part])
                if len(made) != len(part):
                    raise ValueError(f"generate_fn returned {len(made)} images for {len(part)} prompts")
            except Exception as e:  # a batch job records the failure and goes on
                failures.append(
                    {
                        "stage": "generate",
                        "item": f"jobs {start}..{start + len(part) - 1}",
                        "error": _error(e),
                    }
                )
                bar.update(len(part))
                continue
            for (p, s), image in zip(part, made):
                image = image.convert("RGB")
                passed, rate, failed = _truth(check(image, p.requirements).results)
                images.append(JudgedImage("generated", p.prompt, p.category, s, image, passed, rate, failed))
            bar.update(len(part))
    return images, failures


def image_pairs(images: Sequence[JudgedImage], seed: str = "critic-eval:pairs") -> list[tuple[int, int, str]]:
    """Pairs of images of one prompt and source whose pass rates differ.

    Returns:
        ``(i, j, truth)`` with indices into ``images`` and the truth's preference (``"first"``
        when image i has the higher pass rate); each pair's order is drawn from a fixed seed.
    """
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[int]] = {}
    for k, im in enumerate(images):
        groups.setdefault((im.source, im.prompt), []).append(k)
    pairs = []
    for members in groups.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                i, j = members[x], members[y]
                if images[i].pass_rate == images[j].pass_rate:
                    continue
                if rng.random() < 0.5:
                    i, j = j, i
                pairs.append((i, j, FIRST if images[i].pass_rate > images[j].pass_rate else SECOND))
    return pairs


# ---------------------------------------------------------------------------------------------
# Reasoning chains with injected errors


@dataclass
class Chain:
    """A reasoning chain about a test scene as a model might have written it, with the truth.

    Attributes:
        index: the scene index.
        image: RGB ``PIL.Image`` (a plain render).
        question: the question.
        steps: the steps as shown (one of them may be wrong).
        answer: the final answer as shown (may be wrong).
        wrong_steps: per step, True when it is incorrect.
        wrong_answer: the final answer is incorrect.
    """

    index: int
    image: object
    question: str
    steps: list[str]
    answer: str
    wrong_steps: list[bool]
    wrong_answer: bool


def reasoning_chains(split: str, n: int, canvas: int = 64) -> list[Chain]:
    """``n`` chains about scenes of ``split`` (:class:`~selfcorrect.world.data.WorldDataset` with
    the split's seed), built and corrupted exactly as the world VLM's ``critique`` training task
    does (about half with one wrong step), with their own seeded random streams."""
    from selfcorrect.world.conversations import SPLIT_SEEDS, _chain
    from selfcorrect.world.data import WorldDataset

    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLIT_SEEDS)}")
    dataset = WorldDataset(n, seed=SPLIT_SEEDS[split], canvas=canvas, caption_styles=())
    chains = []
    for i in range(n):
        item = dataset[i]
        rng = random.Random(f"critic-eval:{split}:chain:{i}")
        chain = _chain(list(item["scene"].objects), rng)
        shown, verdict = chain.with_errors(rng)
        wrong = [not verdict[f"step_{k + 1}"]["correctness"] for k in range(len(shown.steps))]
        chains.append(
            Chain(
                i,
                item["image"],
                chain.question,
                shown.steps,
                shown.answer,
                wrong,
                not verdict["answer_correctness"],
            )
        )
    return chains


# ---------------------------------------------------------------------------------------------
# Judging (a batch goes on past a bad item)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def judge_images(
    critic, images: Sequence[JudgedImage], *, chunk: int = 32, progress: bool = True, desc: str = ""
):
    """Every image through ``critic.critique_many`` in chunks; ``(verdicts, failures, seconds)``.

    A chunk whose call raises is judged item by item; an item that still raises has verdict None
    and a failure record.
    """
    from tqdm.auto import tqdm

    verdicts: list = []
    failures: list[dict] = []
    started = time.perf_counter()
    with tqdm(total=len(images), desc=desc, disable=not progress) as bar:
        for start in range(0, len(images), chunk):
            part = images[start : start + chunk]
            try:
                out = critic.critique_many([im.image for im in part], [im.prompt for im in part])
                if len(out) != len(part):
                    raise ValueError(f"{len(out)} verdicts for {len(part)} images")
            except Exception:
                out = []
                for im in part:
                    try:
                        out.append(critic.critique(im.image, im.prompt))
                    except Exception as e:
                        out.append(None)
                        failures.append({"stage": desc, "item": im.label(), "error": _error(e)})
            verdicts += out
            bar.update(len(part))
    return verdicts, failures, time.perf_counter() - started


def _warm_up(fn, *args) -> None:
    """One untimed call, so that lazy initialisation does not count as throughput."""
    try:
        fn(*args)
    except Exception:  # the timed run records the failure
        pass


def _rate(count: int, seconds: float) -> float | None:
    return count / seconds if count and seconds > 0 else None


def image_metrics(images: Sequence[JudgedImage], verdicts: Sequence) -> dict:
    """Pass/fail accuracy and Spearman per source and over all images (see the module docstring).

    Returns:
        ``{source | "all": {"images", "accuracy", "decided", "majority", "spearman", "unparsed",
        "failed"}}`` for every source present.
    """
    out = {}
    for source in [*SOURCES, "all"]:
        rows = [(im, v) for im, v in zip(images, verdicts, strict=True) if source in ("all", im.source)]
        if not rows:
            continue
        parsed = [(im, v) for im, v in rows if v is not None and not v.unparsed]
        acc = accuracy([im.passed for im, _ in parsed], [v.passed for _, v in parsed])
        out[source] = {
            "images": len(rows),
            "accuracy": acc["accuracy"],
            "decided": acc["n"],
            "majority": majority_rate([im.passed for im, _ in rows]),
            "spearman": spearman([v.score for _, v in parsed], [im.pass_rate for im, _ in parsed]),
            "unparsed": sum(v is not None and v.unparsed for _, v in rows),
            "failed": sum(v is None for _, v in rows),
        }
    return out


def pairwise_metrics(images: Sequence[JudgedImage], pairs, predicted: Sequence[str | None]) -> dict:
    """:func:`pairwise_accuracy` per source and over all pairs."""
    out = {}
    for source in [*SOURCES, "all"]:
        rows = [
            (t, p)
            for (i, _, t), p in zip(pairs, predicted, strict=True)
            if source in ("all", images[i].source)
        ]
        if rows:
            out[source] = pairwise_accuracy([t for t, _ in rows], [p for _, p in rows])
    return out


def compare_pairs(critic, images: Sequence[JudgedImage], pairs, *, progress: bool = True, desc: str = ""):
    """``critic.compare`` on every pair; ``(preferences, margins, unparsed, failures, seconds)``.

    ``margins`` is the preference the sign of ``P(first) - P(second)`` gives (:func:`margin_preference`).
    """
    from tqdm.auto import tqdm

    preferences, margins, failures, unparsed = [], [], [], 0
    started = time.perf_counter()
    for i, j, _ in tqdm(pairs, desc=desc, disable=not progress):
        try:
            verdict = critic.compare(images[i].image, images[j].image, images[i].prompt)
        except Exception as e:
            preferences.append(None)
            margins.append(None)
            failures.append(
                {"stage": desc, "item": f"{images[i].label()} vs seed {images[j].seed}", "error": _error(e)}
            )
            continue
        unparsed += bool(verdict.unparsed)
        preferences.append(verdict.preference)
        margins.append(margin_preference(verdict))
    return preferences, margins, unparsed, failures, time.perf_counter() - started


def margin_preference(verdict) -> str | None:
    """The preference of a pairwise verdict with its tie left out: ``"first"`` when its
    ``P(first) > P(second)``, ``"second"`` when lower, ``"tie"`` when equal; None without
    probabilities (unparsed).

    This is what LLaVA-Critic's DPO recipe reads of a comparison (the sign of the margin
    ``a_ij``, :func:`~selfcorrect.critics.llava_critic.comparison_margin`): a critic whose most
    probable verdict is always "tie" can still order the pair by the rest of its probability.
    """
    probabilities = getattr(verdict, "probabilities", None)
    if verdict.unparsed or not probabilities:
        return None
    return preference_of(probabilities[FIRST], probabilities[SECOND])


def evaluate_image_critics(
    critics: dict,
    images: Sequence[JudgedImage],
    pairs,
    *,
    compare: Sequence[str] = (),
    chunk: int = 32,
    progress: bool = True,
):
    """Every critic on every image, and the pairs judged by score difference and by ``compare``.

    Returns:
        ``(critic_results, pairwise, verdicts, pair_predictions, failures)``: the ``critics`` and
        ``pairwise`` parts of :func:`run`'s result, the verdicts per critic name (one per image,
        None where the call failed), the preferences per judge name (one per pair), and the
        failure records.
    """
    critic_results, pairwise, verdicts, pair_predictions, failures = {}, {}, {}, {}, []
    for name, critic in critics.items():
        if images:
            _warm_up(critic.critique_many, [im.image for im in images[:2]], [im.prompt for im in images[:2]])
        mine, failed, seconds = judge_images(critic, images, chunk=chunk, progress=progress, desc=name)
        verdicts[name] = mine
        failures += failed
        critic_results[name] = {
            "mode": getattr(critic, "mode", None),
            "threshold": getattr(critic, "threshold", None),
            "sources": image_metrics(images, mine) if images else {},
            "unparsed": sum(v is not None and v.unparsed for v in mine),
            "failed": sum(v is None for v in mine),
            "seconds": round(seconds, 3),
            "images_per_second": _rate(len(images), seconds),
        }
        scores = [None if v is None or v.unparsed else v.score for v in mine]
        judge = f"{name}/score"
        pair_predictions[judge] = [preference_of(scores[i], scores[j]) for i, j, _ in pairs]
        pairwise[judge] = {"sources": pairwise_metrics(images, pairs, pair_predictions[judge])}
    for name in compare:
        if name not in critics or not pairs:
            continue
        critic, (i, j, _) = critics[name], pairs[0]
        _warm_up(critic.compare, images[i].image, images[j].image, images[i].prompt)
        preferences, margins, unparsed, failed, seconds = compare_pairs(
            critic, images, pairs, progress=progress, desc=f"{name} compare"
        )
        failures += failed
        pair_predictions[f"{name}/compare"] = preferences
        pairwise[f"{name}/compare"] = {
            "sources": pairwise_metrics(images, pairs, preferences),
            "unparsed": unparsed,
            "failed": sum(p is None for p in preferences) - unparsed,
            "seconds": round(seconds, 3),
            "pairs_per_second": _rate(len(pairs), seconds),
        }
        pair_predictions[f"{name}/compare:margin"] = margins
        pairwise[f"{name}/compare:margin"] = {"sources": pairwise_metrics(images, pairs, margins)}
    return critic_results, pairwise, verdicts, pair_predictions, failures


def llava_modes(critic_results: dict, verdicts: dict) -> dict:
    """LLaVA-Critic's log-prob mode against its generate-and-parse mode on the same images:
    throughput of each, their ratio, and :func:`mode_agreement`; ``{"skipped": ...}`` unless both
    :data:`LOGPROB` and :data:`GENERATE` were run."""
    if LOGPROB not in verdicts or GENERATE not in verdicts:
        return {"skipped": "needs both LLaVA-Critic modes"}
    fast = critic_results[LOGPROB]["images_per_second"]
    slow = critic_results[GENERATE]["images_per_second"]
    return {
        "logprob_images_per_second": fast,
        "generate_images_per_second": slow,
        "speedup": fast / slow if fast and slow else None,
        **mode_agreement(verdicts[LOGPROB], verdicts[GENERATE]),
        "generate_unparsed": critic_results[GENERATE]["unparsed"],
    }


def _image_records(images: Sequence[JudgedImage], verdicts: dict) -> list[dict]:
    """Per image its truth and every critic's score / pass / unparsed (None: the call failed)."""

    def brief(v) -> dict | None:
        return None if v is None else {"score": v.score, "passed": v.passed, "unparsed": v.unparsed}

    return [
        {
            "source": im.source,
            "prompt": im.prompt,
            "category": im.category,
            "seed": im.seed,
            "kind": im.kind,
            "passed": im.passed,
            "pass_rate": im.pass_rate,
            "failures": im.failures,
            "critics": {name: brief(v[k]) for name, v in verdicts.items()},
        }
        for k, im in enumerate(images)
    ]


def evaluate_steps(
    step_critic, chains: Sequence[Chain], *, logprob_critic=None, progress: bool = True
) -> tuple[dict, list, list]:
    """LookBack (``critique_steps``) and the plain one-shot critique (``critique_plain``) on every
    chain; VISCO's F1 on incorrect steps and answers.

    Args:
        step_critic: the critic whose methods are ``lookback`` and ``plain``.
        logprob_critic: optionally a second one (log-prob mode) measured as ``lookback:logprob``
            and ``plain:logprob``. Its LookBack judges the critique prompt that ``lookback``
            filled in (the same greedy solve, questions and answers would be generated again), so
            its ``seconds`` are the judgement's alone; a chain ``lookback`` failed on is done whole.

    Returns:
        ``(summary, records, failures)``: ``summary`` has ``chains``, ``steps``, ``wrong_steps``,
        ``wrong_answers``, per method ``steps`` and ``answer`` (see :func:`precision_recall_f1`),
        ``step_auroc`` (of 1 - P(correct), over the chains with probabilities; None without),
        ``unparsed``, ``failed``, ``seconds``, ``chains_per_second``; ``f1_gain`` (LookBack step
        F1 minus plain step F1), with a LookBack trace ``checked_f1_gain`` (the same for
        ``lookback:checked``: LookBack's verdict and its evidence read by rule, whose ``seconds``
        are LookBack's and the rule's) and, with ``logprob_critic``, ``auroc_gain`` (LookBack minus plain
        for the log-prob methods' step AUROC).
    """
    from tqdm.auto import tqdm

    from selfcorrect.critics.evidence import check_verdict

    traces: dict[int, object] = {}  # chain index -> LookBack's trace (its prompt with the evidence)

    def lookback(c: Chain):
        if not hasattr(step_critic, "lookback"):  # a step critic without LookBack's trace
            return step_critic.critique_steps(c.image, c.question, c.steps, c.answer)
        traces[c.index] = trace = step_critic.lookback(c.image, c.question, c.steps, c.answer)
        return trace.verdict

    def checked(c: Chain):
        if c.index not in traces:  # LookBack failed on this chain: nothing to check
            raise ValueError("no LookBack trace for this chain")
        trace = traces[c.index]
        check = check_verdict(
            trace.verdict, c.steps, trace.questions, trace.answers, question=c.question, answer=c.answer
        )
        return check.verdict

    def lookback_logprob(c: Chain):
        if c.index not in traces or not hasattr(logprob_critic, "judge"):
            return logprob_critic.critique_steps(c.image, c.question, c.steps, c.answer)
        return logprob_critic.judge(c.image, traces[c.index].prompt, len(c.steps), logprob_critic.name)

    def plain(critic):
        return lambda c: critic.critique_plain(c.image, c.question, c.steps, c.answer)

    methods = {"lookback": lookback, "plain": plain(step_critic)}
    if hasattr(step_critic, "lookback"):
        methods["lookback:checked"] = checked
    if logprob_critic is not None:
        methods["lookback:logprob"] = lookback_logprob
        methods["plain:logprob"] = plain(logprob_critic)
    records = [
        {
            "index": c.index,
            "question": c.question,
            "steps": c.steps,
            "answer": c.answer,
            "wrong_steps": c.wrong_steps,
            "wrong_answer": c.wrong_answer,
        }
        for c in chains
    ]
    summary: dict = {
        "chains": len(chains),
        "steps": sum(len(c.steps) for c in chains),
        "wrong_steps": sum(sum(c.wrong_steps) for c in chains),
        "wrong_answers": sum(c.wrong_answer for c in chains),
    }
    failures = []
    for name, fn in methods.items():
        if chains:
            _warm_up(fn, chains[0])
        flagged_steps, flagged_answers, unparsed, failed = [], [], 0, 0
        wrong, p_wrong = [], []  # the steps of chains with probabilities
        started = time.perf_counter()
        for c, record in zip(tqdm(chains, desc=name, disable=not progress), records):
            try:
                verdict = fn(c)
            except Exception as e:
                verdict = None
                failed += 1
                failures.append({"stage": name, "item": f"chain {c.index}", "error": _error(e)})
            if verdict is None or verdict.unparsed:
                unparsed += verdict is not None
                steps, answer = [False] * len(c.steps), False
                record[name] = None
            else:
                steps = [ok is False for ok in verdict.steps]
                answer = verdict.answer_correct is False
                record[name] = {"steps": verdict.steps, "answer_correct": verdict.answer_correct}
                if verdict.step_probabilities is not None:
                    record[name]["step_probabilities"] = verdict.step_probabilities
                    wrong += c.wrong_steps
                    p_wrong += [1.0 - p for p in verdict.step_probabilities]
            flagged_steps += steps
            flagged_answers.append(answer)
        seconds = time.perf_counter() - started
        if name == "lookback:checked":  # the rule needs LookBack's trace: its time counts too
            seconds += summary["lookback"]["seconds"]
        summary[name] = {
            "steps": precision_recall_f1([w for c in chains for w in c.wrong_steps], flagged_steps),
            "answer": precision_recall_f1([c.wrong_answer for c in chains], flagged_answers),
            "step_auroc": auroc(wrong, p_wrong) if p_wrong else None,
            "unparsed": unparsed,
            "failed": failed,
            "seconds": round(seconds, 3),
            "chains_per_second": _rate(len(chains), seconds),
        }
    summary["f1_gain"] = summary["lookback"]["steps"]["f1"] - summary["plain"]["steps"]["f1"]
    if "lookback:checked" in summary:
        summary["checked_f1_gain"] = (
            summary["lookback:checked"]["steps"]["f1"] - summary["plain"]["steps"]["f1"]
        )
    if logprob_critic is not None:
        both = [summary[f"{m}:logprob"]["step_auroc"] for m in ("lookback", "plain")]
        summary["auroc_gain"] = None if None in both else both[0] - both[1]
    return summary, records, failures


# ---------------------------------------------------------------------------------------------
# TLDR


def load_tldr(device: str = "cpu") -> tuple[object | None, str | None]:
    """The registry's TLDR critic (the shipped head on its backbone): ``(critic, None)``, or
    ``(None, reason)`` when it cannot be built (no head, unreadable weights), so that the
    evaluation records TLDR as not available, with the reason, instead of failing."""
    from selfcorrect.critics import CRITICS
    from selfcorrect.errors import SelfcorrectError

    try:
        return CRITICS["tldr"](device=device), None
    except (SelfcorrectError, OSError) as e:
        return None, f"the TLDR critic cannot be built: {_error(e)}"


@dataclass
class Caption:
    """A caption of a test scene, true or a hard negative, with its bad character spans."""

    index: int
    image: object
    text: str
    correct: bool
    bad_spans: list[tuple[int, int]]  # characters of the words the negative's edit changed
    kind: str = ""  # the negative's edit (world.negatives.NEGATIVE_KINDS); "" for a true caption


def edit_spans(truth: str, negative: str) -> list[tuple[int, int]]:
    """Character spans of ``negative`` that differ from ``truth``, word by word (difflib).

    ``"two red circles"`` -> ``"two blue circles"`` gives the span of ``"blue"``; a deleted word
    marks the word after it (or before it at the end), so that every edit marks something.
    """
    words = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", negative)]
    matcher = difflib.SequenceMatcher(a=truth.split(), b=[w for _, _, w in words], autojunk=False)
    spans = []
    for op, _, _, j0, j1 in matcher.get_opcodes():
        if op == "equal" or not words:
            continue
        if j0 == j1:  # a deletion: mark a neighbour
            j0, j1 = (j0, j0 + 1) if j0 < len(words) else (j0 - 1, j0)
        spans.append((words[j0][0], words[j1 - 1][1]))
    return spans


def token_labels(tokens: Sequence[str], text: str, spans: Sequence[tuple[int, int]]) -> list[bool] | None:
    """Per token, True when it overlaps a bad span; None when the tokens cannot be laid on
    ``text`` (each token's stripped text is looked for from where the previous one ended)."""
    labels, cursor = [], 0
    for token in tokens:
        piece = token.replace("\u2581", " ").replace("\u0120", " ").strip()
        if not piece:
            labels.append(False)
            continue
        at = text.find(piece, cursor)
        if at < 0:
            return None
        end = at + len(piece)
        labels.append(any(at < b and a < end for a, b in spans))
        cursor = end
    return labels


def tldr_captions(split: str, n: int, canvas: int = 64) -> list[Caption]:
    """``n`` captions of test scenes: alternately a true one and a hard negative of it."""
    from selfcorrect.world.conversations import SPLIT_SEEDS
    from selfcorrect.world.data import WorldDataset
    from selfcorrect.world.grammar import caption
    from selfcorrect.world.negatives import hard_negatives

    dataset = WorldDataset(n, seed=SPLIT_SEEDS[split], canvas=canvas, caption_styles=())
    out = []
    for i in range(n):
        item = dataset[i]
        rng = random.Random(f"critic-eval:{split}:tldr:{i}")
        truth = caption(item["scene"], "positional", rng)
        negatives = hard_negatives(item["scene"], truth, n=1, rng=rng) if i % 2 else []
        if negatives:
            text = negatives[0].text
            out.append(Caption(i, item["image"], text, False, edit_spans(truth, text), negatives[0].kind))
        else:
            out.append(Caption(i, item["image"], truth, True, []))
    return out


def evaluate_tldr(critic, captions: Sequence[Caption], prompt: str | None = None) -> tuple[dict, list]:
    """Token AUROC (positive = a token of the edit, score = 1 - reward), token accuracy at the
    critic's threshold and response accuracy (TLDR: a response is correct when no token is
    flagged) of a token critic; ``(summary, failures)``.

    ``summary["by_kind"]`` has, per kind of edit, the negatives' count, the share of them judged
    wrong (``caught``) and the token AUROC over their tokens alone (None without both labels).
    """
    from selfcorrect.critics import prompts as P

    prompt = P.DESCRIBE if prompt is None else prompt
    labels, scores, flags, responses, failures, unaligned = [], [], [], [], [], 0
    kinds: dict[str, dict] = {}  # edit kind -> its negatives' labels, scores and catches
    started = time.perf_counter()
    for c in captions:
        try:
            verdict = critic.reward_tokens(c.image, prompt, c.text)
        except Exception as e:
            failures.append({"stage": "tldr", "item": f"caption {c.index}", "error": _error(e)})
            continue
        responses.append((c.correct, verdict.response_correct))
        mine = token_labels(verdict.tokens, c.text, c.bad_spans)
        if mine is None:
            unaligned += 1
            continue
        wrongness = [1.0 - r for r in verdict.rewards]
        labels += mine
        scores += wrongness
        if c.kind:
            k = kinds.setdefault(c.kind, {"labels": [], "scores": [], "caught": []})
            k["labels"] += mine
            k["scores"] += wrongness
            k["caught"].append(not verdict.response_correct)
        flags += [r < verdict.threshold for r in verdict.rewards]
    seconds = time.perf_counter() - started
    summary = {
        "available": True,
        "captions": len(captions),
        "tokens": len(labels),
        "bad_tokens": sum(labels),
        "token_auroc": auroc(labels, scores),
        "token_accuracy": accuracy(labels, flags)["accuracy"],
        "response_accuracy": accuracy([t for t, _ in responses], [p for _, p in responses])["accuracy"],
        "unaligned": unaligned,
        "failed": len(failures),
        "captions_per_second": _rate(len(responses), seconds),
        "by_kind": {
            kind: {
                "captions": len(k["caught"]),
                "caught": sum(k["caught"]) / len(k["caught"]),
                "token_auroc": auroc(k["labels"], k["scores"]),
            }
            for kind, k in sorted(kinds.items())
        },
    }
    return summary, failures


# ---------------------------------------------------------------------------------------------
# The whole evaluation


def _step_methods(steps: dict) -> list[str]:
    """The LookBack / plain methods an :func:`evaluate_steps` summary has, in report order."""
    names = ("lookback", "lookback:checked", "plain", "lookback:logprob", "plain:logprob")
    return [name for name in names if name in steps]


def run(
    split: str = "test",
    limit: int = 50,
    *,
    critics: dict | None = None,
    compare: Sequence[str] = (LOGPROB,),
    step_critic=None,
    step_logprob=None,
    tldr=None,
    tldr_note: str | None = None,
    generate_fn: GenerateFn | None = None,
    seeds: int = 2,
    chains: int | None = None,
    captions: int | None = None,
    chunk: int = 32,
    canvas: int = 64,
    progress: bool = True,
) -> dict:
    """Run the measurements of the module docstring.

    Args:
        split: ``train``, ``val`` or ``test``: the prompt suite, scene seed and chain scenes.
        limit: prompts of the split; each gives up to two renders and ``seeds`` generated images.
        critics: result name -> image critic (``critique_many`` / ``critique``), e.g.
            ``{"llava_critic": ..., "llava_critic:generate": ..., "vqa": ..., "clip": ...}``; the
            two LLaVA-Critic names are compared as modes when both are present.
        compare: names in ``critics`` whose ``compare`` is also measured on the pairs.
        step_critic: a LookBack critic (``critique_steps`` and ``critique_plain``), or None.
        step_logprob: optionally the same critic in log-prob mode (see :func:`evaluate_steps`).
        tldr: a token critic (``reward_tokens``), or None; ``tldr_note`` says why there is none.
        generate_fn: ``(prompts, seeds) -> images`` of a text-to-image model; None leaves the
            ``generated`` source out.
        seeds: generated images per prompt.
        chains: reasoning chains; default ``limit``; 0 skips them.
        captions: TLDR captions (half true, half one-edit negatives); default ``chains``; 0 skips
            them.
        chunk: images per critic call.

    Returns:
        A JSON-ready dict:

        * ``split``, ``limit``, ``seeds``, ``prompts``; ``images``: per source ``images``,
          ``passed`` and ``pairs``.
        * ``critics``: per name ``mode``, ``threshold``, ``sources`` (per source and ``all``: see
          :func:`image_metrics`), ``unparsed``, ``failed``, ``seconds``, ``images_per_second``.
        * ``pairwise``: per judge (``NAME/score`` for every critic, ``NAME/compare`` and
          ``NAME/compare:margin`` for ``compare``) ``sources`` (see :func:`pairwise_accuracy`); compare judges also
          ``unparsed``, ``failed``, ``seconds``, ``pairs_per_second``.
        * ``llava_modes``: ``logprob_images_per_second``, ``generate_images_per_second``,
          ``speedup``, ``n``, ``score_gap``, ``pass_agreement``, ``generate_unparsed`` (or
          ``skipped``).
        * ``steps``: see :func:`evaluate_steps` (or ``skipped``); ``tldr``: see
          :func:`evaluate_tldr`, or ``{"available": false, "reason"}``.
        * ``targets`` (:data:`TARGETS`), ``checks`` (:func:`checks`), ``failures`` (stage, item,
          error), ``seconds``, ``machine``, ``date``, and ``records`` (``images``, ``pairs``,
          ``chains``: per item truth and verdicts).
    """
    import torch

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    if seeds < 0:
        raise ValueError(f"seeds must be at least 0, got {seeds}")
    critics = dict(critics or {})
    chains = limit if chains is None else chains
    started = time.perf_counter()
    failures: list[dict] = []

    # 1. Images and their truth.
    prompts = select_prompts(split, limit)
    images, failed = rendered_images(prompts, split, canvas)
    failures += failed
    if generate_fn is not None and seeds > 0:
        made, failed = generated_images(generate_fn, prompts, seeds, chunk=chunk, progress=progress)
        images += made
        failures += failed
    pairs = image_pairs(images)
    result: dict = {"split": split, "limit": limit, "seeds": seeds if generate_fn is not None else 0}
    result["images"] = {
        source: {
            "images": sum(im.source == source for im in images),
            "passed": sum(im.source == source and im.passed for im in images),
            "pairs": sum(images[i].source == source for i, _, _ in pairs),
        }
        for source in SOURCES
    }
    result["prompts"] = len(prompts)

    # 2. Image critics: pass/fail, Spearman, pairs (score difference, compare), throughput.
    result["critics"], result["pairwise"], verdicts, pair_predictions, failed = evaluate_image_critics(
        critics, images, pairs, compare=compare, chunk=chunk, progress=progress
    )
    failures += failed

    # 3. LLaVA-Critic: log-prob vs generate-and-parse.
    result["llava_modes"] = llava_modes(result["critics"], verdicts)

    # 4. LookBack vs plain.
    chain_records: list = []
    if step_critic is not None and chains > 0:
        summary, chain_records, failed = evaluate_steps(
            step_critic,
            reasoning_chains(split, chains, canvas),
            logprob_critic=step_logprob,
            progress=progress,
        )
        result["steps"] = summary
        failures += failed
    else:
        result["steps"] = {"skipped": "no step critic given" if step_critic is None else "chains=0"}

    # 5. TLDR (hook).
    captions = chains if captions is None else captions
    if tldr is not None and captions > 0:
        summary, failed = evaluate_tldr(tldr, tldr_captions(split, captions, canvas))
        result["tldr"] = summary
        failures += failed
    else:
        reason = "captions=0" if tldr is not None else tldr_note or "no TLDR critic given"
        result["tldr"] = {"available": False, "reason": reason}

    result["targets"] = {k: dict(v) for k, v in TARGETS.items()}
    result["checks"] = checks(result)
    result["failures"] = failures
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["machine"] = {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result["records"] = {
        "images": _image_records(images, verdicts),
        "pairs": [
            {
                "first": i,
                "second": j,
                "truth": t,
                "judges": {name: p[n] for name, p in pair_predictions.items()},
            }
            for n, (i, j, t) in enumerate(pairs)
        ],
        "chains": chain_records,
    }
    return result


def checks(result: dict) -> list[dict]:
    """Every measured number that has a target, with whether it meets it (None: not measured)."""
    out = []

    def add(target: str, subject: str, value) -> None:
        out.append({"target": target, "subject": subject, "value": value, "met": meets(target, value)})

    for name, c in result["critics"].items():
        add("pass_fail_accuracy", name, c["sources"].get("all", {}).get("accuracy"))
    for name, p in result["pairwise"].items():
        add("pairwise_accuracy", name, p["sources"].get("all", {}).get("accuracy"))
    if "f1_gain" in result["steps"]:
        add("lookback_f1_gain", "lookback vs plain", result["steps"]["f1_gain"])
    if "checked_f1_gain" in result["steps"]:
        add("lookback_f1_gain", "lookback:checked vs plain", result["steps"]["checked_f1_gain"])
    add("tldr_token_auroc", "tldr", result["tldr"].get("token_auroc"))
    modes = result["llava_modes"]
    add("logprob_speedup", "llava_critic", modes.get("speedup"))
    add("mode_score_gap", "llava_critic", modes.get("score_gap"))
    return out


# ---------------------------------------------------------------------------------------------
# Report


def _fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mark(target: str, value) -> str:
    met = meets(target, value)
    return "" if met is None else " ✓" if met else " ✗"


def _target_text(target: str) -> str:
    t = TARGETS[target]
    return f"{'≥' if t['op'] == '>=' else '≤'} {t['value']:g}"


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def markdown_report(result: dict) -> str:
    """The results as Markdown tables (images, pass/fail, pairwise, steps, speed, TLDR, targets)."""
    img = result["images"]
    lines = [
        f"Split `{result['split']}`: {result['prompts']} prompts; "
        + ", ".join(
            f"{s} {img[s]['images']} images ({img[s]['passed']} pass, {img[s]['pairs']} pairs)"
            for s in SOURCES
        )
        + ".\n",
        f"**Pass/fail vs the oracle** (target accuracy {_target_text('pass_fail_accuracy')}; majority = "
        "always giving the commoner label)\n",
        "| critic | images | accuracy | majority | Spearman (score vs pass rate) | unparsed | failed |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, c in result["critics"].items():
        for source, s in c["sources"].items():
            acc = _fmt(s["accuracy"]) + (
                _mark("pass_fail_accuracy", s["accuracy"]) if source == "all" else ""
            )
            if s["accuracy"] is None and c["threshold"] is None:
                acc = "– (no threshold)"
            lines.append(
                f"| {_escape(name)} | {source} ({s['images']}) | {acc} | {_fmt(s['majority'])} | "
                f"{_fmt(s['spearman'])} | {s['unparsed']} | {s['failed']} |"
            )
    lines += [
        "",
        f"**Pairwise** on images of one prompt whose pass rates differ (target {_target_text('pairwise_accuracy')}; "
        "a tie counts as wrong)\n",
        "| judge | pairs | accuracy | ties | no verdict |",
        "|---|---|---:|---:|---:|",
    ]
    for name, p in result["pairwise"].items():
        for source, s in p["sources"].items():
            acc = _fmt(s["accuracy"]) + (_mark("pairwise_accuracy", s["accuracy"]) if source == "all" else "")
            lines.append(
                f"| {_escape(name)} | {source} ({s['n'] + s['undecided']}) | {acc} | {s['ties']} | {s['undecided']} |"
            )

    steps = result["steps"]
    lines += [
        "",
        f"**LookBack vs plain critique** (VISCO step F1 on incorrect steps; target gain {_target_text('lookback_f1_gain')})\n",
    ]
    if "skipped" in steps:
        lines.append(f"skipped: {steps['skipped']}")
    else:
        lines += [
            f"{steps['chains']} chains, {steps['steps']} steps, {steps['wrong_steps']} wrong steps, "
            f"{steps['wrong_answers']} wrong answers.\n",
            "| method | step precision | step recall | step F1 | step AUROC | answer F1 | unparsed | failed | chains/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name in _step_methods(steps):
            m = steps[name]
            lines.append(
                f"| {name} | {_fmt(m['steps']['precision'])} | {_fmt(m['steps']['recall'])} | "
                f"{_fmt(m['steps']['f1'])} | {_fmt(m.get('step_auroc'))} | {_fmt(m['answer']['f1'])} | "
                f"{m['unparsed']} | {m['failed']} | {_fmt(m['chains_per_second'])} |"
            )
        lines.append(
            f"\nLookBack step F1 − plain step F1 = {steps['f1_gain']:+.2f}{_mark('lookback_f1_gain', steps['f1_gain'])}"
        )
        if "checked_f1_gain" in steps:
            gain = steps["checked_f1_gain"]
            lines.append(
                f"\nWith its evidence also read by rule (`lookback:checked`, not VISCO's method): "
                f"{gain:+.2f}{_mark('lookback_f1_gain', gain)}"
            )
        if steps.get("auroc_gain") is not None:
            lines.append(
                f"\nIn log-prob mode (P(correct) at each step's `correctness`): LookBack step AUROC − "
                f"plain step AUROC = {steps['auroc_gain']:+.2f}"
            )

    lines += [
        "",
        "**Throughput** (this machine, warm-up excluded)\n",
        "| critic | unit | per second |",
        "|---|---|---:|",
    ]
    for name, c in result["critics"].items():
        lines.append(f"| {_escape(name)} | images | {_fmt(c['images_per_second'])} |")
    for name, p in result["pairwise"].items():
        if "pairs_per_second" in p:
            lines.append(f"| {_escape(name)} | pairs | {_fmt(p['pairs_per_second'])} |")
    if "skipped" not in steps:
        for name in _step_methods(steps):
            unit = {
                "lookback:logprob": "chains (the judgement alone: evidence from lookback)",
                "lookback:checked": "chains (lookback, then the rule)",
            }.get(name, "chains")
            lines.append(f"| {name} | {unit} | {_fmt(steps[name]['chains_per_second'])} |")
    modes = result["llava_modes"]
    if "skipped" not in modes:
        lines += [
            "",
            f"LLaVA-Critic log-prob vs generate-and-parse: {_fmt(modes['speedup'], 1)}x faster"
            f"{_mark('logprob_speedup', modes['speedup'])} (target {_target_text('logprob_speedup')}); "
            f"mean score gap {_fmt(modes['score_gap'], 3)}{_mark('mode_score_gap', modes['score_gap'])} "
            f"(target {_target_text('mode_score_gap')}), same pass/fail on {_fmt(modes['pass_agreement'])} "
            f"of {modes['n']} images; {modes['generate_unparsed']} generated verdicts unparsed.",
        ]

    tldr = result["tldr"]
    lines += ["", f"**TLDR** (target token AUROC {_target_text('tldr_token_auroc')})\n"]
    if not tldr.get("available"):
        lines.append(f"not available: {_escape(tldr.get('reason', ''))}")
    else:
        lines += [
            "| captions | tokens | bad tokens | token AUROC | token accuracy | response accuracy | unaligned |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {tldr['captions']} | {tldr['tokens']} | {tldr['bad_tokens']} | "
            f"{_fmt(tldr['token_auroc'])}{_mark('tldr_token_auroc', tldr['token_auroc'])} | "
            f"{_fmt(tldr['token_accuracy'])} | {_fmt(tldr['response_accuracy'])} | {tldr['unaligned']} |",
        ]
        if tldr.get("by_kind"):
            lines += [
                "",
                "By the negative's edit (token AUROC over the tokens of those negatives alone):\n",
                "| edit | negatives | caught | token AUROC |",
                "|---|---:|---:|---:|",
            ]
            for kind, k in tldr["by_kind"].items():
                lines.append(f"| {kind} | {k['captions']} | {_fmt(k['caught'])} | {_fmt(k['token_auroc'])} |")

    lines += ["", "**Targets** (issue 5)\n", "| target | subject | measured | met |", "|---|---|---:|---|"]
    for c in result["checks"]:
        met = "–" if c["met"] is None else "yes" if c["met"] else "no"
        what = _escape(f"{TARGETS[c['target']]['what']} {_target_text(c['target'])}")
        lines.append(f"| {what} | {_escape(c['subject'])} | {_fmt(c['value'], 3)} | {met} |")
    if result["failures"]:
        lines += ["", f"{len(result['failures'])} items failed (see `failures` in the JSON)."]
    return "\n".join(lines) + "\n"
