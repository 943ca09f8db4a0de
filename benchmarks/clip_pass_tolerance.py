"""Choose the CLIP critic's pass/fail tolerance: accuracy against the oracle for several values.

The CLIP critic (:class:`selfcorrect.critics.clip.ClipCritic`) fails an image when one of the
prompt's one-edit variants fits it better than the prompt by more than ``tolerance`` (cosine).
This runs the image-level part of ``selfcorrect eval critics`` (renders that pass and fail each
prompt, and images of the world text-to-image model read by the oracle) once per tolerance, with
one shared CLIP, and writes JSON + Markdown. Choose on ``val``; ``selfcorrect eval critics
--split test`` reports the chosen default.

    python benchmarks/clip_pass_tolerance.py --split val --limit 60 \\
        --json benchmarks/results/clip_pass_tolerance_val.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=60, help="prompts of the split")
    p.add_argument("--seeds", type=int, default=2, help="generated images per prompt")
    p.add_argument(
        "--tolerances",
        default="0,0.01,0.02,0.03,0.04,0.05,0.06,0.07,0.09,0.12",
        help="comma-separated cosine tolerances",
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from selfcorrect.cli import _world_generator
    from selfcorrect.critics.clip import ClipCritic
    from selfcorrect.io import write_report
    from selfcorrect.world.critic_eval import run

    tolerances = [float(t) for t in args.tolerances.split(",")]
    shared = ClipCritic(contrast=False)
    critics = {
        f"tolerance {t:g}": ClipCritic(shared.model, shared.preprocess, shared.tokenizer, tolerance=t)
        for t in tolerances
    }
    generate_fn, _ = _world_generator(None, "cpu") if args.seeds else (None, None)
    started = time.perf_counter()
    result = run(
        args.split,
        args.limit,
        critics=critics,
        compare=(),
        generate_fn=generate_fn,
        seeds=args.seeds,
        chains=0,
    )
    rows = []
    for t, c in zip(tolerances, result["critics"].values()):
        sources = c["sources"]
        rows.append(
            {
                "tolerance": t,
                **{f"{s}_accuracy": sources[s]["accuracy"] for s in sources},
                **{f"{s}_majority": sources[s].get("majority") for s in sources},
            }
        )
    command = "python benchmarks/clip_pass_tolerance.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None
    )
    out = {
        "command": command,
        "split": args.split,
        "images": result["images"],
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": result["machine"],
    }
    m = result["machine"]
    lines = [
        f"# CLIP critic: pass/fail accuracy vs tolerance ({args.split} split)",
        "",
        f"`{command}`",
        "",
        f"{m['platform']}, torch {m['torch']} (threads: {m['torch_threads']}), {out['seconds']} s. Images: "
        + ", ".join(f"{s} {v['images']} ({v['passed']} pass)" for s, v in result["images"].items())
        + ". An image fails when a one-edit variant of its prompt beats the prompt by more than the"
        " tolerance (cosine). Majority = always giving the commoner label.",
        "",
        "| tolerance | render | generated | all |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [r.get(f"{s}_accuracy") for s in ("render", "generated", "all")]
        lines.append(
            f"| {r['tolerance']:g} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in cells) + " |"
        )
    majority = [rows[0].get(f"{s}_majority") for s in ("render", "generated", "all")]
    lines.append("| majority | " + " | ".join("–" if v is None else f"{v:.3f}" for v in majority) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.json:
        write_report(args.json, out, text)


if __name__ == "__main__":
    main()
