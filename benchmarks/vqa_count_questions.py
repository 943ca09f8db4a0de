"""How well the VQA critic's count questions judge count requirements: DSG's yes/no wording
("Are there exactly two red circles?") against TIFA's multiple choice ("How many red circles are
there?", P of the required digit, or of any digit at least as large for "at least n").

Every count requirement of the split's counting prompts, on a render that passes the prompt, a
render of a hard negative that fails it (as ``selfcorrect eval critics`` makes them) and on
images of the world text-to-image model (``--seeds`` per prompt); the truth per requirement is
the scene spec's or the oracle's. A wording judges a requirement right when its answer score
(P(yes), or P(expected number)) is at least 0.5 exactly when the requirement holds:

    python benchmarks/vqa_count_questions.py --split val --seeds 2 \\
        --json benchmarks/results/vqa_count_questions_val.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _report import machine_line, publish

WORDS = ("zero", "one", "two", "three", "four")


def yes_no_question(req) -> str:
    """DSG's wording of a count requirement (the critic's before TIFA's): ``Are there exactly two
    red circles?``, ``Is there exactly one red circle?``, ``Are there at least three ...?``."""
    amount = "exactly" if req.exact else "at least"
    if req.count == 1:
        return f"Is there {amount} one {req.query.phrase()}?"
    return f"Are there {amount} {WORDS[req.count]} {req.query.phrase(plural=True)}?"


def count_rows(images) -> list[dict]:
    """One row per (image, count question of the VQA critic's decomposition), with its truth."""
    from selfcorrect.critics.vqa import decompose
    from selfcorrect.world.grammar import parse_prompt

    rows = []
    for im in images:
        requirements = parse_prompt(im.prompt)
        d = decompose(requirements)
        for q in d.questions:
            if q.kind != "count":
                continue
            described = d.requirements[q.requirement]
            rows.append(
                {
                    "image": im,
                    "question": q,
                    "requirement": requirements.objects[q.groups[0]],
                    "holds": not any(f.startswith(described + ":") for f in im.failures),
                }
            )
    return rows


def judge(vlm, rows: list[dict], batch_size: int) -> None:
    """Add ``yes_no`` and ``how_many`` (the answer scores) to each row."""
    import torch

    from selfcorrect.critics import prompts as P

    images = [r["image"].image for r in rows]
    logp = vlm.score(
        images, [yes_no_question(r["requirement"]) for r in rows], [P.YES, P.NO], batch_size=batch_size
    )
    for r, p in zip(rows, torch.softmax(logp.float(), dim=-1)[:, 0].tolist()):
        r["yes_no"] = p
    q0 = rows[0]["question"]
    logp = vlm.score(images, [r["question"].text for r in rows], list(q0.choices), batch_size=batch_size)
    for r, probs in zip(rows, torch.softmax(logp.float(), dim=-1).tolist()):
        answers = dict(zip(r["question"].choices, probs))
        r["how_many"] = sum(answers[a] for a in r["question"].expected)


def summary(rows: list[dict]) -> dict:
    n = len(rows)
    right = {w: sum((r[w] >= 0.5) == r["holds"] for r in rows) / n for w in ("yes_no", "how_many")}
    return {"requirements": n, "holding": sum(r["holds"] for r in rows) / n, **right}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="val")
    p.add_argument("--seeds", type=int, default=2, help="generated images per prompt (0: renders only)")
    p.add_argument("--vlm", default="world")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from selfcorrect.cli import _world_generator
    from selfcorrect.vision.vlm import VLM
    from selfcorrect.world.critic_eval import generated_images, rendered_images, select_prompts

    started = time.perf_counter()
    prompts = [p for p in select_prompts(args.split, 10_000) if p.category == "counting"]
    images, _ = rendered_images(prompts, args.split)
    if args.seeds:
        generate_fn, _ = _world_generator(None, "cpu")
        made, _ = generated_images(generate_fn, prompts, args.seeds, progress=False)
        images += made
    rows = count_rows(images)
    judge(VLM.from_pretrained(args.vlm), rows, args.batch_size)
    groups = {
        "renders": [r for r in rows if r["image"].source == "render"],
        "generated": [r for r in rows if r["image"].source == "generated"],
        "all": rows,
    }
    table = {name: summary(part) for name, part in groups.items() if part}
    command = f"python benchmarks/vqa_count_questions.py --split {args.split} --seeds {args.seeds}"
    command += f" --vlm {args.vlm}" if args.vlm != "world" else ""
    lines = [
        "# VQA critic: count questions, yes/no or how many",
        "",
        f"`{command}`",
        "",
        f"{machine_line(started)} VLM `{args.vlm}`; {len(prompts)} counting prompts of the {args.split} "
        "split. Share of count requirements judged right (answer score >= 0.5 exactly when the "
        "requirement holds, by the scene spec or the oracle) by DSG's yes/no wording and by "
        "TIFA's how-many wording.",
        "",
        "| images | count requirements | share that hold | yes/no (`Are there exactly two ...?`) "
        "| how many (`How many ... are there?`) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in table.items():
        lines.append(
            f"| {name} | {s['requirements']} | {s['holding']:.2f} | {s['yes_no']:.3f} | {s['how_many']:.3f} |"
        )
    publish(lines, args.json, {"command": command, "vlm": args.vlm, "split": args.split, "rows": table})


if __name__ == "__main__":
    main()
