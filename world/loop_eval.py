"""``selfcorrect eval loop``: oracle accuracy before and after the correction loop.

For every prompt of a suite split (``--limit`` per category) and seed, the loop generates an
image and corrects it with its critic and detector; the oracle then grades the first image, the
image after each round (the best-so-far the loop would return if stopped there) and the final
one. The critic driving the loop is never the oracle: the oracle only grades.

Reported (JSON + Markdown):

* accuracy per category before and after, and the gain (overall = mean over categories, as
  GenEval and :mod:`selfcorrect.world.t2i_eval` compute it);
* accuracy after each round (the gain per round);
* the share of edits rolled back by the verify step, and how often the loop made a passing image
  fail or a failing one pass (by the oracle);
* median seconds per prompt (whole loop, first generation included) and the cost of one
  correction round (detect + edit + verify) relative to a fresh generation.
"""

from __future__ import annotations

import platform
import statistics
import time

from selfcorrect.world.oracle import check
from selfcorrect.world.requirements import CATEGORIES
from selfcorrect.world.suites import load_suite


def evaluate_loop(
    corrector, *, split: str = "test", seeds: int = 4, limit: int | None = None, progress: bool = True
) -> tuple[dict, list]:
    """Run the loop on a suite split and grade with the oracle.

    Args:
        corrector: a :class:`~selfcorrect.diffusion.runner.Corrector`.
        split, seeds, limit: the suite split, seeds 0..seeds-1 per prompt, prompts per category.

    Returns:
        ``(result, examples)``: the JSON-ready result (``records`` per image included) and, for
        pictures, ``(prompt, first image, final image, passed before, passed after)`` tuples.
    """
    from tqdm.auto import tqdm

    jobs = []
    for category in CATEGORIES:
        prompts = load_suite(split, category)
        jobs += [(p, s) for p in (prompts[:limit] if limit else prompts) for s in range(seeds)]
    rounds = corrector.config.rounds
    records, examples = [], []
    bar = tqdm(jobs, desc="eval loop", disable=not progress)
    for suite_prompt, seed in bar:
        trace = corrector.correct(suite_prompt.prompt, seed)
        requirements = suite_prompt.requirements
        # The image the loop holds after round r: the last accepted one up to r.
        held, per_round = 0, []
        passed = {0: check(trace.images[0], requirements).passed}
        for r in range(1, rounds + 1):
            record = next((x for x in trace.rounds if x["round"] == r), None)
            if record is not None and record.get("accepted"):
                held = record["image"]
                passed[held] = check(trace.images[held], requirements).passed
            per_round.append(passed[held])
        edits = [x for x in trace.rounds if "score_after" in x]
        round_seconds = [sum(x["timings"].values()) for x in edits]
        records.append(
            {
                "prompt": suite_prompt.prompt,
                "seed": seed,
                "category": suite_prompt.category,
                "before": passed[0],
                "after": passed[trace.best],
                "after_round": per_round,
                "scores": trace.scores,
                "edits": len(edits),
                "rolled_back": sum(1 for x in edits if not x["accepted"]),
                "stopped": trace.stopped,
                "seconds": round(trace.seconds, 3),
                "first_generation_seconds": round(trace.first_seconds, 3),
                "round_seconds": [round(s, 3) for s in round_seconds],
            }
        )
        examples.append(
            (suite_prompt.prompt, trace.images[0], trace.final.image, passed[0], passed[trace.best])
        )
        bar.set_postfix(before=_mean(r["before"] for r in records), after=_mean(r["after"] for r in records))
    return summarise(records, split=split, seeds=seeds, limit=limit, rounds=rounds), examples


def summarise(records: list[dict], **settings) -> dict:
    """Accuracies, gains, rollbacks and timings of per-image ``records`` (see :func:`evaluate_loop`)."""
    categories = {}
    for category in CATEGORIES:
        rows = [r for r in records if r["category"] == category]
        if rows:
            before, after = _mean(r["before"] for r in rows), _mean(r["after"] for r in rows)
            categories[category] = {
                "before": before,
                "after": after,
                "gain": round(after - before, 4),
                "n": len(rows),
            }
    overall_before = (
        round(statistics.fmean(c["before"] for c in categories.values()), 4) if categories else 0.0
    )
    overall_after = round(statistics.fmean(c["after"] for c in categories.values()), 4) if categories else 0.0
    rounds = settings.get("rounds", 0)
    by_round = []
    for r in range(rounds):
        per_cat = [_mean(x["after_round"][r] for x in records if x["category"] == c) for c in categories]
        by_round.append(round(statistics.fmean(per_cat), 4) if per_cat else 0.0)
    edits = sum(r["edits"] for r in records)
    round_seconds = [s for r in records for s in r["round_seconds"]]
    first = [r["first_generation_seconds"] for r in records]
    return {
        **settings,
        "images": len(records),
        "categories": categories,
        "overall": {
            "before": overall_before,
            "after": overall_after,
            "gain": round(overall_after - overall_before, 4),
        },
        "overall_after_round": by_round,
        "edits": edits,
        "rolled_back_share": round(sum(r["rolled_back"] for r in records) / edits, 4) if edits else None,
        "fixed": sum(1 for r in records if r["after"] and not r["before"]),
        "broken": sum(1 for r in records if r["before"] and not r["after"]),
        "median_seconds_per_prompt": round(statistics.median(r["seconds"] for r in records), 3)
        if records
        else None,
        "median_round_seconds": round(statistics.median(round_seconds), 3) if round_seconds else None,
        "round_cost_vs_generation": (
            round(statistics.median(round_seconds) / statistics.median(first), 2)
            if round_seconds and first
            else None
        ),
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "records": records,
    }


def markdown(result: dict) -> str:
    """The before/after table and the loop's costs."""
    cats = list(result["categories"])
    lines = [
        "| | " + " | ".join(cats) + " | overall |",
        "|---|" + "---:|" * (len(cats) + 1),
    ]
    for key in ("before", "after", "gain"):
        cells = [
            f"{result['categories'][c][key]:+.2f}" if key == "gain" else f"{result['categories'][c][key]:.2f}"
            for c in cats
        ]
        total = result["overall"][key]
        lines.append(
            f"| {key} | "
            + " | ".join(cells)
            + (f" | {total:+.2f} |" if key == "gain" else f" | {total:.2f} |")
        )
    by_round = ", ".join(f"{a:.2f}" for a in result["overall_after_round"])
    lines += [
        "",
        f"- images: {result['images']} ({result.get('seeds')} seeds per prompt, split {result.get('split')})",
        f"- overall accuracy after each round: {by_round}",
        f"- edits: {result['edits']}, rolled back: {result['rolled_back_share']}",
        f"- oracle: {result['fixed']} images fixed, {result['broken']} broken",
        f"- median seconds per prompt: {result['median_seconds_per_prompt']}; median seconds per "
        f"correction round: {result['median_round_seconds']} "
        f"({result['round_cost_vs_generation']}x a fresh generation)",
    ]
    return "\n".join(lines) + "\n"


def before_after_sheet(examples: list, count: int = 8, cell: int = 128):
    """A picture: pairs of (first, final) images where the oracle's verdict changed, fixes first."""
    from PIL import Image, ImageDraw

    chosen = [e for e in examples if e[4] and not e[3]][:count]
    chosen += [e for e in examples if e[3] == e[4] and e[1] is not e[2]][: count - len(chosen)]
    if not chosen:
        chosen = examples[:count]
    label = 30
    sheet = Image.new("RGB", (2 * cell * len(chosen) + 8 * len(chosen), cell + 2 * label), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (prompt, first, final, before, after) in enumerate(chosen):
        x = k * (2 * cell + 8)
        sheet.paste(first.convert("RGB").resize((cell, cell), Image.NEAREST), (x, label))
        sheet.paste(final.convert("RGB").resize((cell, cell), Image.NEAREST), (x + cell, label))
        draw.text((x + 2, 2), prompt[:40], fill="black")
        draw.text((x + 2, 14), prompt[40:80], fill="black")
        draw.text(
            (x + 2, label + cell + 4),
            "before: " + ("pass" if before else "fail"),
            fill=(0, 120, 0) if before else (180, 0, 0),
        )
        draw.text(
            (x + cell + 2, label + cell + 4),
            "after: " + ("pass" if after else "fail"),
            fill=(0, 120, 0) if after else (180, 0, 0),
        )
    return sheet


def _mean(values) -> float:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else 0.0
