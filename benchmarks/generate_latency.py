"""Latency of one 64x64 world image: `selfcorrect generate`'s path vs a plain diffusers call.

Both run the same pipeline with the same steps, guidance and seeds, interleaved, after warm-up.
"ours" is :func:`selfcorrect.diffusion.generate.generate` (per-image generator, NaN check on every
step, final latents kept); "plain" is ``pipe(prompt, generator=...)`` with nothing added. The
ratio shows what our bookkeeping costs.

Usage::

    python benchmarks/generate_latency.py --source selfcorrect/weights/world-t2i --repeats 20
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

PROMPTS = (
    "two red circles and a blue square",
    "a green triangle left of a yellow cross",
    "three purple squares",
)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=None, help="world pipeline directory (default: the packaged one)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/generate_latency_cpu.json"))
    args = p.parse_args(argv)

    import torch

    from selfcorrect.diffusion.generate import generate
    from selfcorrect.diffusion.presets import load_pipeline
    from selfcorrect.io import write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_pipeline("world", args.source)
    pipe, d = loaded.pipeline, loaded.defaults
    pipe.set_progress_bar_config(disable=True)

    def ours(prompt, seed):
        generate(
            pipe, [prompt], [seed], steps=d.num_inference_steps, guidance=d.guidance_scale, size=d.resolution
        )

    def plain(prompt, seed):
        pipe(
            prompt,
            num_inference_steps=d.num_inference_steps,
            guidance_scale=d.guidance_scale,
            height=d.resolution,
            width=d.resolution,
            generator=torch.Generator("cpu").manual_seed(seed),
        )

    times: dict[str, list[float]] = {"ours": [], "plain": []}
    for i in range(args.repeats + 2):  # the first two rounds are warm-up
        for name, fn in (("ours", ours), ("plain", plain)):
            start = time.perf_counter()
            fn(PROMPTS[i % len(PROMPTS)], i)
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "command": shlex.join(
            ["python", "benchmarks/generate_latency.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "steps": d.num_inference_steps,
        "guidance": d.guidance_scale,
        "size": d.resolution,
        "attention": loaded.attention,
        "repeats": args.repeats,
        "median_seconds": {k: round(v, 4) for k, v in median.items()},
        "p90_seconds": {k: round(statistics.quantiles(v, n=10)[-1], 4) for k, v in times.items()},
        "ours_over_plain": round(median["ours"] / median["plain"], 3),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    table = (
        "# Latency of one 64x64 world image (CPU)\n\n"
        f"`{result['command']}`: {d.num_inference_steps} steps, guidance {d.guidance_scale}, attention "
        f"{loaded.attention}, {args.repeats} timed runs each after 2 warm-up rounds, interleaved.\n\n"
        "| path | median s | p90 s |\n|---|---:|---:|\n"
        f"| selfcorrect generate | {median['ours']:.3f} | {result['p90_seconds']['ours']:.3f} |\n"
        f"| plain diffusers call | {median['plain']:.3f} | {result['p90_seconds']['plain']:.3f} |\n\n"
        f"Ours / plain: {result['ours_over_plain']:.2f}x. Target: median <= 1 s.  \n"
        f"Machine: {result['machine']['platform']}, {result['machine']['cpus']} CPUs, "
        f"torch threads {result['machine']['torch_threads']}; torch {torch.__version__}.\n"
    )
    write_report(args.json, result, table)
    print(table)
    return result


if __name__ == "__main__":
    main()
