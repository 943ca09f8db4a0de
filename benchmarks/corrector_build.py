"""How long it takes to load a corrector's critic and detector (no pipeline), one CLIP or two.

``Corrector.build`` lends the loop's clip-proposals detector's world CLIP to the detection critic;
the baseline builds the two apart, each loading its own (what it did before). Median of
``--repeats`` warm builds, one thread.

    python benchmarks/corrector_build.py --json benchmarks/results/corrector_build.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

from selfcorrect.io import write_report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    import torch

    from selfcorrect.critics import CRITICS
    from selfcorrect.diffusion.runner import Corrector
    from selfcorrect.vision.detectors import load_detector

    torch.set_num_threads(1)

    def shared():
        Corrector.build(None, critic="detection", detector="clip-proposals")

    def apart():
        load_detector("clip-proposals")
        CRITICS["detection"](detector="clip-proposals")

    seconds = {}
    for name, fn in (
        ("shared CLIP (Corrector.build)", shared),
        ("two CLIPs (detector and critic apart)", apart),
    ):
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        seconds[name] = round(statistics.median(times), 3)
    command = f"python benchmarks/corrector_build.py --repeats {args.repeats}"
    text = "\n".join(
        [
            "# Loading a corrector's critic and detector",
            "",
            f"`{command}`",
            "",
            f"{platform.platform()}, torch {torch.__version__}, 1 thread, CPU; median of {args.repeats} warm builds.",
            "",
            "| build | seconds |",
            "|---|---:|",
            *[f"| {k} | {v:.3f} |" for k, v in seconds.items()],
            "",
        ]
    )
    print(text)
    if args.json:
        write_report(args.json, {"command": command, "seconds": seconds}, text)


if __name__ == "__main__":
    main()
