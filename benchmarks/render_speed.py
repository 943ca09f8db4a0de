"""Renderer throughput on one core: scenes rendered per second at 64x64, flat and textured.

Usage::

    python benchmarks/render_speed.py
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

N = 2000  # scenes per timed pass
PASSES = 5


def main() -> dict:
    from selfcorrect.io import write_json, write_text
    from selfcorrect.world.render import render
    from selfcorrect.world.sampling import random_scene

    result = {
        "command": "python benchmarks/render_speed.py",
        "n": N,
        "passes": PASSES,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for texture in (0.0, 0.2):
        scenes = [random_scene(i, texture=texture) for i in range(N)]  # sampling is not timed
        rates = []
        for _ in range(PASSES):
            start = time.perf_counter()
            for scene in scenes:
                render(scene)
            rates.append(N / (time.perf_counter() - start))
        result[f"texture_{texture}"] = {
            "median_images_per_s": round(statistics.median(rates)),
            "min": round(min(rates)),
        }
    out = Path("benchmarks/results/render_speed.json")
    write_json(out, result)
    write_text(
        out.with_suffix(".md"),
        (
            "# Renderer throughput (one process, 64x64)\n\n"
            f"`{result['command']}`: {N} random scenes (1-5 objects), median of {PASSES} passes.\n\n"
            "| background | images/s (median) | slowest pass |\n|---|---:|---:|\n"
            f"| flat | {result['texture_0.0']['median_images_per_s']} | {result['texture_0.0']['min']} |\n"
            f"| textured (0.2) | {result['texture_0.2']['median_images_per_s']} | {result['texture_0.2']['min']} |\n\n"
            f"Machine: {result['machine']['platform']}, {result['machine']['cpus']} CPUs.\n"
        ),
    )
    print(result)
    return result


if __name__ == "__main__":
    main()
