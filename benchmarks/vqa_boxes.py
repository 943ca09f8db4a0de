"""The VQA critic with every question asked, against judging relations, and relations and sizes,
from the VLM's boxes: pass/fail and pairwise accuracy against the oracle, on the images
``selfcorrect eval critics`` judges (renders and ``--seeds`` generated images per prompt):

    python benchmarks/vqa_boxes.py --split val --limit 150 --json benchmarks/results/vqa_boxes_val150.json

The questions asked are the same in every variant; a variant only replaces the answers to some of
them by the world's rule applied to the VLM's boxes (see :mod:`selfcorrect.critics.vqa`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _report import machine_line, publish

VARIANTS = {  # name -> VQACritic options
    "asked": {},
    "relations from boxes": {"relations": "boxes"},
    "relations and sizes from boxes": {"relations": "boxes", "sizes": "boxes"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=150, help="prompts of the split")
    p.add_argument("--seeds", type=int, default=2, help="generated images per prompt")
    p.add_argument("--vlm", default="world")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from selfcorrect.cli import _world_generator
    from selfcorrect.critics.vqa import VQACritic
    from selfcorrect.vision.vlm import VLM
    from selfcorrect.world.critic_eval import run

    started = time.perf_counter()
    vlm = VLM.from_pretrained(args.vlm)
    critics = {
        name: VQACritic(vlm, batch_size=args.batch_size, **options) for name, options in VARIANTS.items()
    }
    generate_fn, _ = _world_generator(None, "cpu") if args.seeds else (None, None)
    result = run(
        args.split,
        args.limit,
        critics=critics,
        compare=(),
        generate_fn=generate_fn,
        seeds=args.seeds,
        chains=0,
        captions=0,
        tldr_note="not measured here",
    )
    rows = {}
    for name in VARIANTS:
        images = result["critics"][name]["sources"]
        pairs = result["pairwise"][f"{name}/score"]["sources"]
        rows[name] = {
            "sources": {
                source: {
                    "images": images[source]["images"],
                    "pass_fail": images[source]["accuracy"],
                    "spearman": images[source]["spearman"],
                    "pairs": pairs.get(source, {}).get("n"),
                    "pairwise": pairs.get(source, {}).get("accuracy"),
                }
                for source in images
            },
            "images_per_second": result["critics"][name]["images_per_second"],
        }
    command = f"python benchmarks/vqa_boxes.py --split {args.split} --limit {args.limit} --seeds {args.seeds}"
    command += f" --vlm {args.vlm}" if args.vlm != "world" else ""
    lines = [
        "# VQA critic: questions asked, or answered from the VLM's boxes",
        "",
        f"`{command}`",
        "",
        f"{machine_line(started)} VLM `{args.vlm}`; {args.limit} prompts of the {args.split} split, "
        f"a passing and a failing render and {args.seeds} generated images each (as `selfcorrect eval "
        "critics`). Pass/fail and pairwise accuracy against the oracle (a tie counts as wrong).",
        "",
        "| variant | images | pass/fail | Spearman | pairs | pairwise | images/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        for source, r in row["sources"].items():
            speed = f"{row['images_per_second']:.1f}" if source == "all" else ""
            lines.append(
                f"| {name} | {source} ({r['images']}) | {_f(r['pass_fail'])} | {_f(r['spearman'])} | "
                f"{r['pairs'] if r['pairs'] is not None else '–'} | {_f(r['pairwise'])} | {speed} |"
            )
    publish(lines, args.json, {"command": command, "vlm": args.vlm, "split": args.split, "rows": rows})


def _f(value) -> str:
    return "–" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
