"""A picture of what the world model draws: test-suite prompts, one column per seed, each image
framed green (the oracle passes it) or red (it fails), with the prompt written beside the row.

Usage::

    python benchmarks/t2i_samples.py --per-category 2 --seeds 4 -o benchmarks/results/t2i_world_samples.png
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

SCALE = 3  # 64 px images drawn at 192 px
PAD = 6
TEXT_WIDTH = 270


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=None, help="world pipeline directory (default: the packaged one)")
    p.add_argument("--per-category", type=int, default=2, help="test prompts per category")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results/t2i_world_samples.png"))
    args = p.parse_args(argv)

    from PIL import Image, ImageDraw

    from selfcorrect.diffusion.generate import generate
    from selfcorrect.diffusion.presets import load_pipeline
    from selfcorrect.io import save_image
    from selfcorrect.world.oracle import check
    from selfcorrect.world.requirements import CATEGORIES
    from selfcorrect.world.suites import load_suite

    loaded = load_pipeline("world", args.source)
    d = loaded.defaults
    rows = [p for c in CATEGORIES for p in load_suite("test", c)[: args.per_category]]
    pairs = [(row, s) for row in rows for s in range(args.seeds)]
    images = generate(
        loaded.pipeline,
        [r.prompt for r, _ in pairs],
        [s for _, s in pairs],
        steps=d.num_inference_steps,
        guidance=d.guidance_scale,
        size=d.resolution,
        batch_size=32,
    )
    cell = d.resolution * SCALE + 2 * PAD
    sheet = Image.new("RGB", (TEXT_WIDTH + cell * args.seeds, cell * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, ((row, _), result) in enumerate(zip(pairs, images, strict=True)):
        r, c = divmod(i, args.seeds)
        passed = check(result.image, row.requirements).passed
        x, y = TEXT_WIDTH + c * cell, r * cell
        draw.rectangle(
            [x + 1, y + 1, x + cell - 2, y + cell - 2],
            outline=(30, 160, 60) if passed else (200, 30, 30),
            width=PAD - 2,
        )
        sheet.paste(result.image.resize((cell - 2 * PAD,) * 2, Image.Resampling.NEAREST), (x + PAD, y + PAD))
        if c == 0:
            text = row.category + "\n" + textwrap.fill(row.prompt, 48)
            draw.text((8, y + cell // 2 - 16), text, fill="black")
    save_image(sheet, args.output)
    print(f"wrote {args.output}")
    return args.output


if __name__ == "__main__":
    main()
