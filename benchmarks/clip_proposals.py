"""How well the `clip-proposals` detector finds and labels objects in world text-to-image images.

Generates images for val-split prompts with the shipped world model, runs the detector with every
"{colour} {shape}" label as a phrase, and compares each detection with the oracle's reading of the
image (the oracle grades here; the loop never sees it). Prints and writes JSON + Markdown.

    python benchmarks/clip_proposals.py --prompts 18 --json benchmarks/results/clip_proposals_val.json
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--prompts",
        type=int,
        default=18,
        help="prompts per category (two_objects, counting, color_attribution)",
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from selfcorrect.diffusion.generate import generate
    from selfcorrect.diffusion.presets import load_pipeline
    from selfcorrect.io import write_report
    from selfcorrect.vision.detectors import load_detector
    from selfcorrect.world.oracle import analyse
    from selfcorrect.world.scene import COLOURS, SHAPES
    from selfcorrect.world.suites import load_suite

    prompts = [
        s.prompt
        for c in ("two_objects", "counting", "color_attribution")
        for s in load_suite("val", c)[: args.prompts]
    ]
    images = [
        g.image
        for g in generate(
            load_pipeline("world").pipeline,
            prompts,
            list(range(len(prompts))),
            steps=25,
            guidance=3.0,
            size=64,
        )
    ]
    detector = load_detector("clip-proposals")
    labels = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    objects = found = shape_right = both_right = extra = 0
    for image in images:
        truth = [d for d in analyse(image) if d.shape is not None]
        detections = [(label, d) for label, ds in detector.detect(image, labels).items() for d in ds]
        used = set()
        for t in truth:
            objects += 1
            cx, cy = (t.box[0] + t.box[2]) / 2, (t.box[1] + t.box[3]) / 2
            near = [
                (i, label)
                for i, (label, d) in enumerate(detections)
                if abs((d.box[0] + d.box[2]) / 2 - cx) < 0.08 and abs((d.box[1] + d.box[3]) / 2 - cy) < 0.08
            ]
            if not near:
                continue
            i, label = near[0]
            used.add(i)
            found += 1
            colour, shape = label.split()
            shape_right += shape == t.shape
            both_right += shape == t.shape and colour == t.colour
        extra += len(detections) - len(used)
    result = {
        "images": len(images),
        "objects": objects,
        "recall": round(found / objects, 4),
        "label_accuracy": round(both_right / max(found, 1), 4),
        "shape_accuracy": round(shape_right / max(found, 1), 4),
        "extra_detections": extra,
        "command": f"python benchmarks/clip_proposals.py --prompts {args.prompts}",
    }
    table = (
        "| images | objects | recall (centre within 0.08) | label accuracy | shape accuracy | extra detections |\n"
        "|---:|---:|---:|---:|---:|---:|\n"
        f"| {result['images']} | {objects} | {result['recall']:.3f} | {result['label_accuracy']:.3f} | "
        f"{result['shape_accuracy']:.3f} | {extra} |\n"
    )
    print(table)
    if args.json:
        write_report(
            args.json,
            result,
            f"# clip-proposals detector on world images (val prompts)\n\n`{result['command']}`\n\n{table}",
        )


if __name__ == "__main__":
    main()
