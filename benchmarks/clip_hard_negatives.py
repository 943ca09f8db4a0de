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
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="score a training checkpoint instead: RUN/checkpoints/clip-NNNNNNN of selfcorrect.train.world_clip",
    )
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="score a seeded sample of this many prompts")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/clip_hard_negatives.json"))
    args = p.parse_args(argv)

    import torch

    from selfcorrect.io import write_report
    from selfcorrect.train.world_clip import evaluate_hard_negatives
    from selfcorrect.vision.clip import load_world_clip

    if args.checkpoint is not None:
        model, preprocess, tokenizer = from_checkpoint(args.checkpoint)
    else:
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
    rows = "\n".join(
        f"| {kind} | {acc:.3f} | {result['pairwise_by_kind'][kind]:.3f} | {result['text_cosine_by_kind'][kind]:.3f} |"
        for kind, acc in result["by_kind"].items()
    )
    categories = " | ".join(f"{c} {v:.2f}" for c, v in result["by_category"].items())
    table = (
        f"# World CLIP: hard negatives ({args.split} split, {result['scenes']} scenes)\n\n"
        f"`{result['command']}`\n\n"
        "Scenes: share whose true caption scores above all its hard negatives (of that kind). Pairs:\n"
        "share of (caption, negative) pairs won. Text cosine: how alike the text tower embeds a caption\n"
        "and its negatives (near 1, it cannot tell them apart).\n\n"
        "| negatives | scenes | pairs | text cosine |\n|---|---:|---:|---:|\n"
        f"| all | {result['accuracy']:.3f} | | |\n{rows}\n\n"
        f"By prompt category: {categories}\n"
    )
    write_report(args.json, result, table)
    print(table)
    return result


def from_checkpoint(folder: Path):
    """``(model, preprocess, tokenizer)`` of a world_clip training checkpoint (fp32)."""
    import open_clip
    from safetensors.torch import load_file

    from selfcorrect.vision.clip import WORLD_CLIP_NAME

    config = folder.parent.parent / f"{WORLD_CLIP_NAME}.json"  # written by the run
    if not (folder / "model.safetensors").is_file() or not config.is_file():
        raise SystemExit(f"{folder} is not a checkpoint of a world_clip run (RUN/checkpoints/clip-NNNNNNN)")
    open_clip.add_model_config(config)
    model, _, preprocess = open_clip.create_model_and_transforms(config.stem)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval(), preprocess, open_clip.get_tokenizer(config.stem)


if __name__ == "__main__":
    main()
