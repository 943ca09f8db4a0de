"""LookBack's evidence read by rule (``selfcorrect.critics.evidence``) vs read by the critique.

On the reasoning chains of ``selfcorrect eval critics`` (``world.critic_eval.reasoning_chains``:
about half with one injected wrong step), LookBack runs once per chain (solve, visual queries,
verification, critique; ``check_evidence=False``) and the plain one-shot critique once. From the
same traces, VISCO's step F1 on incorrect steps of:

* ``plain``: the one-shot critique;
* ``lookback``: LookBack's critique (the VLM reads the evidence);
* ``rule``: the evidence read by rule alone (a step is incorrect when an answer contradicts it);
* ``lookback:checked``: both (``LookBackCritic(check_evidence=True)``);
* ``lookback:checked+boxes``: also a step whose boxes all miss (IoU < 0.5) every box of an answer
  that gives boxes, the variant the module leaves out.

and the F1 on incorrect final answers of ``plain``, ``lookback`` and ``lookback:checked`` (which
also matches the answer to the chain's own question, when LookBack asked it, against the final
answer), and, per kind of answer, how often a contradiction fell on a wrong step and on a right one.

    python benchmarks/lookback_evidence_rules.py --split val --chains 160 --json benchmarks/results/lookback_evidence_rules_val.json
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from _report import machine_line, publish

# Every [x0, y0, x1, y1], also outside the image (parsing.parse_boxes drops those, and the moved
# boxes of wrong steps often are), as numbers to compare.
_BOX = re.compile(
    r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]"
)


def boxes_miss(step: str, answer: str) -> bool:
    """The step names boxes, the answer gives boxes, and no pair overlaps at IoU >= 0.5."""
    from selfcorrect.vision.detectors import box_iou

    said = [tuple(map(float, m)) for m in _BOX.findall(step)]
    told = [tuple(map(float, m)) for m in _BOX.findall(answer)]
    return bool(said and told) and not any(box_iou(a, b) >= 0.5 for a in said for b in told)


def answer_kind(answer: str) -> str:
    """The row of the evidence module's table an answer falls under."""
    key = " ".join(answer.lower().split()).strip(" .!")
    first = key.split()[0].strip(",") if key else ""
    if first in ("no", "none", "nothing", "nowhere"):
        return "no / none"
    if first == "yes":
        return "yes"
    if key.isdigit():
        return "a number"
    return "words"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="val")
    parser.add_argument("--chains", type=int, default=160)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()

    from tqdm.auto import tqdm

    from selfcorrect.critics import CRITICS
    from selfcorrect.critics.evidence import check_verdict, contradiction
    from selfcorrect.world.critic_eval import precision_recall_f1, reasoning_chains

    critic = CRITICS["lookback"](check_evidence=False)
    chains = reasoning_chains(args.split, args.chains)
    truth, flags = (
        [],
        {m: [] for m in ("plain", "lookback", "rule", "lookback:checked", "lookback:checked+boxes")},
    )
    answer_flags = {m: [] for m in ("plain", "lookback", "lookback:checked")}
    kinds: dict[str, list[int]] = {}  # kind -> [on wrong steps, on right steps]
    for c in tqdm(chains, desc="chains"):
        trace = critic.lookback(c.image, c.question, c.steps, c.answer)
        plain = critic.critique_plain(c.image, c.question, c.steps, c.answer)
        check = check_verdict(
            trace.verdict, c.steps, trace.questions, trace.answers, question=c.question, answer=c.answer
        )
        for m, v in (("plain", plain), ("lookback", trace.verdict), ("lookback:checked", check.verdict)):
            answer_flags[m].append(v.answer_correct is False)
        for i, (step, wrong) in enumerate(zip(c.steps, c.wrong_steps)):
            pairs = list(zip(trace.questions[i], trace.answers[i]))
            for q, a in pairs:  # every contradicting bullet, by its kind of answer
                if contradiction(step, q, a):
                    kinds.setdefault(answer_kind(a), [0, 0])[0 if wrong else 1] += 1
            said = check.steps[i] is not None  # some bullet contradicts the step
            missed = any(boxes_miss(step, a) for _, a in pairs)
            judged = trace.verdict.steps[i] is False
            truth.append(wrong)
            flags["plain"].append(plain.steps[i] is False)
            flags["lookback"].append(judged)
            flags["rule"].append(said)
            flags["lookback:checked"].append(check.verdict.steps[i] is False)
            flags["lookback:checked+boxes"].append(judged or said or missed)

    scores = {m: precision_recall_f1(truth, f) for m, f in flags.items()}
    base = scores["plain"]["f1"]
    lines = [
        "# LookBack's evidence: read by the critique, by rule, or both",
        "",
        f"`python benchmarks/lookback_evidence_rules.py --split {args.split} --chains {args.chains}"
        + (f" --json {args.json}`" if args.json else "`"),
        "",
        machine_line(started),
        "",
        f"{len(chains)} chains of the `{args.split}` split, {len(truth)} steps, {sum(truth)} wrong; "
        "the world VLM (`selfcorrect/weights/world-vlm`); VISCO's F1 on incorrect steps.",
        "",
        "| method | precision | recall | F1 | F1 − plain |",
        "|---|---:|---:|---:|---:|",
    ]
    for m, s in scores.items():
        lines.append(
            f"| {m} | {s['precision']:.2f} | {s['recall']:.2f} | {s['f1']:.2f} | {s['f1'] - base:+.2f} |"
        )
    wrong_answers = [c.wrong_answer for c in chains]
    answers = {m: precision_recall_f1(wrong_answers, f) for m, f in answer_flags.items()}
    lines += [
        "",
        f"Final answers ({sum(wrong_answers)} wrong):",
        "",
        "| method | precision | recall | F1 |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {m} | {a['precision']:.2f} | {a['recall']:.2f} | {a['f1']:.2f} |" for m, a in answers.items()
    ]
    lines += [
        "",
        "Contradictions found, by the kind of answer (one per bullet):",
        "",
        "| answer | on wrong steps | on right steps |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {w} | {r} |" for k, (w, r) in sorted(kinds.items())]
    record = {
        "split": args.split,
        "chains": len(chains),
        "steps": len(truth),
        "wrong_steps": sum(truth),
        "methods": scores,
        "wrong_answers": sum(wrong_answers),
        "answers": answers,
        "contradictions": {k: {"wrong_steps": w, "right_steps": r} for k, (w, r) in kinds.items()},
        "machine": machine_line(started),
    }
    publish(lines, args.json, record)


if __name__ == "__main__":
    main()
