"""GenEval on the embedded world: generate for every suite prompt and grade with the oracle.

GenEval's protocol (``../shared/notes/anchor-eval-perf.md`` 1.1): 4 images per prompt, each
image correct or not with a reason, per-category accuracy, overall = mean of the category
accuracies. Here the detector is the world oracle, so the grading is exact, and the held-out
colour-shape combinations are reported separately.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

from selfcorrect.world.oracle import check
from selfcorrect.world.requirements import CATEGORIES
from selfcorrect.world.suites import load_suite

# (prompts, seeds) -> one PIL image per pair
GenerateFn = Callable[[list[str], list[int]], list]


def evaluate_t2i(
    generate_fn: GenerateFn,
    *,
    split: str = "test",
    seeds: int = 4,
    limit: int | None = None,
    heldout: bool = True,
    progress: bool = True,
    chunk: int = 64,
) -> dict:
    """Generate ``seeds`` images for each prompt of ``split`` (and of "heldout") and grade them.

    Args:
        generate_fn: ``(prompts, seeds) -> images``.
        split: the suite split to evaluate.
        seeds: images per prompt (seeds 0..seeds-1).
        limit: at most this many prompts per category (the first ones: suites are ordered).
        heldout: also evaluate the held-out-combination split.
        chunk: (prompt, seed) pairs per ``generate_fn`` call.

    Returns:
        A JSON-ready dict: ``categories`` (accuracy and n per category), ``overall``,
        ``heldout`` (same shape), ``records`` (prompt, seed, category, split, passed, failures),
        and ``seconds_per_image``.
    """
    from tqdm.auto import tqdm

    splits = [split] + (["heldout"] if heldout and split != "heldout" else [])
    jobs = []  # (split, SuitePrompt, seed)
    for name in splits:
        for category in CATEGORIES:
            prompts = load_suite(name, category)[:limit] if limit else load_suite(name, category)
            jobs += [(name, p, s) for p in prompts for s in range(seeds)]
    records = []
    started = time.perf_counter()
    bar = tqdm(total=len(jobs), desc="eval t2i", disable=not progress)
    for i in range(0, len(jobs), chunk):
        part = jobs[i : i + chunk]
        images = generate_fn([p.prompt for _, p, _ in part], [s for _, _, s in part])
        for (name, p, s), image in zip(part, images, strict=True):
            verdict = check(image, p.requirements)
            failures = [f"{r.description}: {r.reason}" for r in verdict.results if not r.passed]
            records.append(
                {
                    "prompt": p.prompt,
                    "seed": s,
                    "category": p.category,
                    "split": name,
                    "passed": verdict.passed,
                    "failures": failures,
                }
            )
        bar.update(len(part))
    bar.close()
    elapsed = time.perf_counter() - started
    result = {
        "split": split,
        "seeds": seeds,
        "limit": limit,
        **_summarise([r for r in records if r["split"] == split]),
        "seconds_per_image": round(elapsed / max(len(records), 1), 4),
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if len(splits) > 1:
        result["heldout"] = _summarise([r for r in records if r["split"] == "heldout"])
    result["records"] = records
    return result


def _summarise(records: list[dict]) -> dict:
    categories = {}
    for category in CATEGORIES:
        rows = [r["passed"] for r in records if r["category"] == category]
        if rows:
            categories[category] = {"accuracy": round(sum(rows) / len(rows), 4), "n": len(rows)}
    overall = statistics.fmean(c["accuracy"] for c in categories.values()) if categories else 0.0
    return {"categories": categories, "overall": round(overall, 4)}


def markdown_table(result: dict) -> str:
    """The GenEval-style table: one row per split, one column per category, then overall."""
    cats = list(result["categories"])
    head = "| split | " + " | ".join(cats) + " | overall |\n|---|" + "---:|" * (len(cats) + 1) + "\n"
    rows = [(result["split"], result)]
    if "heldout" in result:
        rows.append(("heldout combos", result["heldout"]))
    body = ""
    for name, part in rows:
        cells = [f"{part['categories'][c]['accuracy']:.2f}" if c in part["categories"] else "–" for c in cats]
        body += f"| {name} | " + " | ".join(cells) + f" | {part['overall']:.2f} |\n"
    return head + body
