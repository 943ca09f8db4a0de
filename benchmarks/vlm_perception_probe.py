"""What a world VLM's vision tower holds, and whether the VLM reads it: two quick probes.

1. **Readout**: a ridge regression (closed form, one-hot targets, standardised features) from the
   tower's last-layer patch tokens (what LLaVA's projector reads) to the colour and the shape of
   the object covering each patch (:func:`selfcorrect.train.world_vision.patch_targets`), fitted
   on 3/4 of the object patches of ``--images`` world images and scored on the rest.
2. **Single objects** (``--vlm`` only): one object rendered alone, then "What colour is the
   {shape}?" and "What shape is the {colour} object?" answered greedily; a lone object needs no
   finding among several, so this isolates reading from binding.

    python benchmarks/vlm_perception_probe.py --vlm selfcorrect/weights/world-vlm --tower runs/vision1/tower \\
        --json benchmarks/results/vlm_perception_probe.json
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from _report import machine_line, publish


def readout(tower, images: int, generated: Path | None, seed: int = 7) -> dict:
    """Held-out ridge accuracy of colour and shape from the tower's object patch tokens."""
    import torch

    from selfcorrect.train.generated_pool import load_pool
    from selfcorrect.train.world_vision import DenseSet, patch_tokens

    grid = tower.config.image_size // tower.config.patch_size
    data = DenseSet(images, seed, grid, load_pool(generated) if generated else None)
    feats, colour, shape = [], [], []
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(data, batch_size=128):
            obj = batch["object"]
            feats.append(patch_tokens(tower, batch["pixel_values"])[obj])
            colour.append(batch["colour"][obj])
            shape.append(batch["shape"][obj])
    x = torch.cat(feats)
    x = torch.cat([(x - x.mean(0)) / (x.std(0) + 1e-6), torch.ones(len(x), 1)], 1)  # (N, D + 1)
    n = len(x) * 3 // 4
    out = {"patches": len(x)}
    for name, y in (("colour", torch.cat(colour)), ("shape", torch.cat(shape))):
        targets = torch.nn.functional.one_hot(y, int(y.max()) + 1).float()
        w = torch.linalg.solve(x[:n].T @ x[:n] + torch.eye(x.shape[1]), x[:n].T @ targets[:n])
        out[name] = round(((x[n:] @ w).argmax(-1) == y[n:]).float().mean().item(), 3)
    return out


def single_objects(vlm, n: int, seed: int = 0) -> dict:
    """Greedy colour and shape answers about ``n`` lone rendered objects."""
    from selfcorrect.world.conversations import vqa_prompt
    from selfcorrect.world.render import render
    from selfcorrect.world.scene import COLOURS, SHAPES, SIZES, Scene, WorldObject
    from selfcorrect.world.suites import HELDOUT_COMBOS
    from selfcorrect.world.vlm_eval import is_right

    rng = random.Random(seed)
    images, questions, truth = [], [], []
    while len(images) < 2 * n:
        colour, shape, size = rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(SIZES)
        if (colour, shape) in HELDOUT_COMBOS:
            continue
        side = 0.3 if size == "large" else 0.18
        x, y = rng.uniform(0.05, 0.95 - side), rng.uniform(0.05, 0.95 - side)
        image = render(Scene((WorldObject(shape, colour, size, (x, y, x + side, y + side)),)))
        images += [image, image]
        questions += [
            vqa_prompt(f"What colour is the {shape}?"),
            vqa_prompt(f"What shape is the {colour} object?"),
        ]
        truth += [colour, shape]
    answers = vlm.chat(images, questions, max_new_tokens=6)
    right = [is_right(a, t) for a, t in zip(answers, truth)]
    return {"objects": n, "colour": round(sum(right[0::2]) / n, 3), "shape": round(sum(right[1::2]) / n, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vlm", action="append", default=[], help="a world VLM folder (repeatable)")
    p.add_argument("--tower", action="append", default=[], help="a CLIPVisionModel folder (repeatable)")
    p.add_argument("--images", type=int, default=1280, help="world images for the readout")
    p.add_argument("--objects", type=int, default=120, help="lone objects for the VLM")
    p.add_argument("--generated", type=Path, default=None, help="a generated pool to draw images from too")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    import torch
    from transformers import AutoModelForImageTextToText, CLIPVisionModel

    from selfcorrect.vision.vlm import VLM

    started, rows = time.perf_counter(), []
    for folder in args.vlm:
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
        row = {"model": folder, "readout": readout(model.model.vision_tower, args.images, args.generated)}
        row["single_objects"] = single_objects(VLM.from_pretrained(folder), args.objects)
        rows.append(row)
    for folder in args.tower:
        tower = CLIPVisionModel.from_pretrained(folder).eval()
        rows.append({"model": folder, "readout": readout(tower, args.images, args.generated)})
    command = "python benchmarks/vlm_perception_probe.py " + " ".join(
        [f"--vlm {v}" for v in args.vlm]
        + [f"--tower {t}" for t in args.tower]
        + [f"--images {args.images} --objects {args.objects}"]
        + ([f"--generated {args.generated}"] if args.generated else [])
    )
    lines = [
        "# World VLM perception probes",
        "",
        f"`{command}`",
        "",
        f"{machine_line(started)} Readout: held-out ridge accuracy of colour / shape from the tower's "
        "object patch tokens. Single objects: greedy answers about one rendered object.",
        "",
        "| model or tower | readout colour | readout shape | single object: colour | single object: shape |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        single = r.get("single_objects", {})
        lines.append(
            f"| `{r['model']}` | {r['readout']['colour']:.3f} | {r['readout']['shape']:.3f} | "
            f"{single.get('colour', '–')} | {single.get('shape', '–')} |"
        )
    publish(lines, args.json, {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
