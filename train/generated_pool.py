"""Images of the world text-to-image model, labelled by the oracle: training data for the world VLM.

The VLM must judge the images the correction loop will show it: generated ones, with their
blurred edges, tinted backgrounds and wrong counts. This script generates images for the prompts
of a suite split (several seeds each), reads each with the oracle (``oracle.analyse``: the label
source, as GPT-4o is for LLaVA-Critic) and saves them as a ``datasets`` data set on disk (columns
``image``, ``prompt``, ``seed``, ``truth``: the oracle's reading as JSON).

Usage::

    python -m selfcorrect.train.generated_pool --output runs/generated --images 1200

Load the result with :func:`load_pool` (a list of
:class:`~selfcorrect.world.conversations.LabelledImage`).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", type=Path, required=True, help="folder for the data set (overwritten)")
    p.add_argument("--images", type=int, default=1200, help="how many images (default: 1200)")
    p.add_argument("--split", default="train", help="prompt suite split (default: train)")
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of prompts and image seeds")
    p.add_argument("--preset", default="world", help="text-to-image preset (default: world)")
    p.add_argument("--source", default=None, help="checkpoint folder or hub id (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def build_pool(
    pipeline,
    prompts: list[str],
    seeds: list[int],
    *,
    steps: int,
    guidance: float,
    size: int,
    batch_size: int = 32,
    progress: bool = True,
) -> list[dict]:
    """Generate one image per (prompt, seed) and label it with the oracle.

    Returns:
        One row per image: ``{"image": PIL.Image, "prompt", "seed", "truth": JSON list of the
        oracle's ``Detected.to_dict()``}``.
    """
    from selfcorrect.diffusion.generate import generate
    from selfcorrect.world.oracle import analyse

    made = generate(
        pipeline,
        prompts,
        seeds,
        steps=steps,
        guidance=guidance,
        size=size,
        batch_size=batch_size,
        progress=progress,
    )
    return [
        {
            "image": g.image,
            "prompt": p,
            "seed": s,
            "truth": json.dumps([d.to_dict() for d in analyse(g.image)]),
        }
        for g, p, s in zip(made, prompts, seeds, strict=True)
    ]


def load_pool(path) -> list:
    """A saved pool as :class:`~selfcorrect.world.conversations.LabelledImage` items."""
    import datasets

    from selfcorrect.world.conversations import LabelledImage
    from selfcorrect.world.oracle import Detected

    rows = datasets.load_from_disk(str(path))
    out = []
    for row in rows:
        truth = [
            Detected(d["shape"], d["colour"], d["size"], tuple(d["box"]), d["confidence"], d["note"])
            for d in json.loads(row["truth"])
        ]
        out.append(LabelledImage(row["image"].convert("RGB"), row["prompt"], truth))
    return out


def main(args: argparse.Namespace) -> Path:
    import datasets

    from selfcorrect.diffusion.presets import load_pipeline
    from selfcorrect.world.suites import load_suite

    if args.images < 1:
        raise SystemExit(f"--images must be at least 1, got {args.images}")
    suite = [p.prompt for p in load_suite(args.split)]
    rng = random.Random(f"generated-pool:{args.split}:{args.seed}")
    prompts = [suite[i % len(suite)] for i in range(args.images)]
    rng.shuffle(prompts)
    seeds = [rng.randrange(2**31) for _ in prompts]
    loaded = load_pipeline(args.preset, args.source)
    d = loaded.defaults
    started = time.perf_counter()
    rows = build_pool(
        loaded.pipeline,
        prompts,
        seeds,
        steps=d.num_inference_steps,
        guidance=d.guidance_scale,
        size=d.resolution,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "prompt": datasets.Value("string"),
            "seed": datasets.Value("int64"),
            "truth": datasets.Value("string"),
        }
    )
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(args.output))
    seconds = time.perf_counter() - started
    (Path(args.output) / "pool.json").write_text(
        json.dumps(
            {
                "images": len(rows),
                "split": args.split,
                "preset": args.preset,
                "steps": d.num_inference_steps,
                "guidance": d.guidance_scale,
                "seconds": round(seconds, 1),
            },
            indent=2,
        )
    )
    print(f"wrote {len(rows)} labelled images to {args.output} in {seconds:.0f} s")
    return Path(args.output)


if __name__ == "__main__":
    from selfcorrect.train.world_t2i import run_script

    raise SystemExit(run_script(main, parse_args))
