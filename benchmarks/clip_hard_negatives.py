"""World CLIP: image -> its true caption among 10 hard negatives (one colour, shape, size, count or
relation changed, or an attribute swapped between two objects), on scenes of a prompt suite.

Usage::

    python benchmarks/clip_hard_negatives.py --split test --json benchmarks/results/clip_hard_negatives.json
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=None, help="open_clip model folder (default: the packaged world CLIP)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="score a seeded sample of this many prompts")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/clip_hard_negatives.json"))
    args = p.parse_args(argv)

    import torch

    from selfcorrect.io import write_json, write_text
    from selfcorrect.train.world_clip import evaluate_hard_negatives
    from selfcorrect.vision.clip import load_world_clip

    model, preprocess, tokenizer = load_world_clip(args.source)
    started = time.perf_counter()
    with torch.no_grad():
        result = evaluate_hard_negatives(model, preprocess, tokenizer, split=args.split, limit=args.limit)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["command"] = shlex.join(
        ["python", "benchmarks/clip_hard_negatives.py", *(sys.argv[1:] if argv is None else argv)]
    )
    result["machine"] = {"platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    rows = "\n".join(f"| {kind} | {acc:.3f} |" for kind, acc in result["by_kind"].items())
    table = (
        f"# World CLIP: hard negatives ({args.split} split, {result['scenes']} scenes)\n\n"
        f"`{result['command']}`\n\n"
        "Share of scenes whose true caption scores above all its hard negatives (of that kind).\n\n"
        f"| negatives | accuracy |\n|---|---:|\n| all | {result['accuracy']:.3f} |\n{rows}\n"
    )
    write_json(args.json, result)
    write_text(args.json.with_suffix(".md"), table)
    print(table)
    return result


if __name__ == "__main__":
    main()
