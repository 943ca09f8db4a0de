"""What the probe scripts of this folder share: the machine line under a report's command, and
printing and writing the report. The scripts run as ``python benchmarks/NAME.py``, so this folder
is on their import path."""

from __future__ import annotations

import platform
import time
from pathlib import Path

from selfcorrect.io import write_report


def machine_line(started: float) -> str:
    """Where a probe ran and for how long since ``started`` (a ``time.perf_counter()``):
    ``Linux-..., torch 2.14.1 (threads: 2), CPU; 31 s.``"""
    import torch

    return (
        f"{platform.platform()}, torch {torch.__version__} (threads: {torch.get_num_threads()}), CPU; "
        f"{time.perf_counter() - started:.0f} s."
    )


def publish(lines: list[str], json_path: Path | None, record: dict) -> None:
    """Print the Markdown ``lines``; with ``json_path``, write ``record`` there as JSON and the
    Markdown beside it (:func:`selfcorrect.io.write_report`)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if json_path:
        write_report(json_path, record, text)
