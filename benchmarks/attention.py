"""Time one UNet forward step per attention backend; ratios are against `math`, measured in the same run.

On a CPU: the embedded world's UNet (16x16 latents of 64x64 images) and a 64x64 pixel-space UNet
whose self-attention runs over 1,024 and 256 positions. On a GPU: the real Stable Diffusion 1.5
UNet (random weights, fp16, batch 4 of 64x64 latents, 77 text tokens). All weights are random:
speed does not depend on them.

Backends are interleaved round-robin, so load from other processes hits all of them alike. The
table reports the median and interquartile range (IQR) of the per-step times, the speed-up over
`math`, and the largest difference of each backend's output from `math` (they compute the same
function, so this is rounding only).

Usage:
    python benchmarks/attention.py              # writes benchmarks/results/attention_{cpu,gpu}.{json,md}
    python benchmarks/attention.py --threads 1  # on a shared CPU machine (see --help)
    python benchmarks/attention.py --quick      # a few seconds, tiny UNet, *_quick.{json,md}
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The world's text-to-image UNet as train/world_t2i.py builds it (profile "cpu", 4.2M
# parameters): a 64x64 image is a 4x16x16 latent; cross-attention at 8x8 and 4x4; 32 text tokens
# of width 128. Batch 8: four prompts with classifier-free guidance.
WORLD_T2I = {
    "name": "world-t2i UNet",
    "batch": 8,
    "text_tokens": 32,
    "config": {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64, 128),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 128,
        "attention_head_dim": 2,  # diffusers' legacy name: the number of heads
        "norm_num_groups": 32,
    },
}

# A 64x64 pixel-space UNet of the same family (24.8M parameters): attention at 32x32 and 16x16,
# as ADM-style pixel models place it, so attention is a large share of the step. Batch 2: one
# prompt with classifier-free guidance.
PIXEL_64 = {
    "name": "64x64 pixel-space UNet",
    "batch": 2,
    "text_tokens": 32,
    "config": {
        "sample_size": 64,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (64, 128, 256),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 256,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
}

# runwayml/stable-diffusion-v1-5 unet/config.json (859,520,964 parameters).
SD15 = {
    "name": "SD 1.5 UNet",
    "batch": 4,
    "text_tokens": 77,
    "config": {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "center_input_sample": False,
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "mid_block_scale_factor": 1,
    },
}

# The tiny UNet of the tests' pipelines, so that --quick runs in seconds.
TINY = {
    "name": "tiny UNet",
    "batch": 2,
    "text_tokens": 16,
    "config": {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "norm_num_groups": 2,
    },
}

# Per run kind: the models, dtype, and untimed / timed steps per backend. The CPU repeats give a
# stable median on a shared 2-core machine in about 2 minutes.
RUNS = {
    "cpu": {"models": [WORLD_T2I, PIXEL_64], "dtype": "float32", "warmup": 2, "repeats": 25},
    "gpu": {"models": [SD15], "dtype": "float16", "warmup": 5, "repeats": 30},
    "quick": {"models": [TINY], "dtype": "float32", "warmup": 1, "repeats": 3},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    parser.add_argument("--warmup", type=int, help="untimed steps per backend (default 2; 5 on GPU)")
    parser.add_argument("--repeats", type=int, help="timed steps per backend (default 25; 30 on GPU)")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's choice). On a machine shared with other jobs use 1: "
        "OpenMP threads that wait for a busy core make steps many times slower, at random",
    )
    parser.add_argument("--quick", action="store_true", help="tiny UNet, 1 warm-up, 3 repeats")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help=f"default: {RESULTS_DIR}")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 2:
        parser.error("--repeats must be at least 2 (the IQR needs two times)")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the table, write JSON + Markdown; returns the JSON record."""
    args = parse_args(argv)  # before the heavy imports, so --help is instant

    import diffusers
    import torch

    from selfcorrect.diffusion.attention import describe_backends

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kind = "quick" if args.quick else "gpu" if device == "cuda" else "cpu"
    run = RUNS[kind]
    warmup = run["warmup"] if args.warmup is None else args.warmup
    repeats = run["repeats"] if args.repeats is None else args.repeats

    available = describe_backends(device)
    backends = [b for b in ("math", "sdpa", "xformers") if available[b]["available"]]
    load_before = os.getloadavg()[0]
    models = [
        _time_model(model, backends, device, getattr(torch, run["dtype"]), warmup, repeats)
        for model in run["models"]
    ]
    record = {
        "benchmark": "one UNet forward step per attention backend",
        "command": shlex.join(
            ["python", "benchmarks/attention.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            # Other processes' load: this benchmark is often run on shared machines.
            "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        },
        "device": device,
        "dtype": run["dtype"],
        "warmup": warmup,
        "repeats": repeats,
        "backends": {name: info for name, info in available.items() if name != "auto"},
        "models": models,
    }
    stem = f"attention_{'gpu' if device == 'cuda' else 'cpu'}{'_quick' if args.quick else ''}"
    _write(record, args.out_dir, stem)
    return record


def _time_model(model: dict, backends: list[str], device: str, dtype, warmup: int, repeats: int) -> dict:
    # Times one forward step of `model` under each backend; returns its part of the JSON record.
    import torch
    from diffusers import UNet2DConditionModel

    from selfcorrect.diffusion.attention import set_attention_backend

    config, batch = model["config"], model["batch"]
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: an 860M-parameter init on CPU is slow
        unet = UNet2DConditionModel(**config).to(dtype).eval()
    g = torch.Generator(device).manual_seed(0)
    size = config["sample_size"]
    sample = torch.randn(batch, config["in_channels"], size, size, generator=g, device=device, dtype=dtype)
    timestep = torch.full((batch,), 500, device=device)
    text_shape = (batch, model["text_tokens"], config["cross_attention_dim"])
    text = torch.randn(text_shape, generator=g, device=device, dtype=dtype)

    def step() -> torch.Tensor:
        with torch.no_grad():
            out = unet(sample, timestep, encoder_hidden_states=text).sample  # (B, C, size, size)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    outputs = {}
    for backend in backends:  # each backend's output, for the comparison, then its warm-up
        set_attention_backend(unet, backend)
        outputs[backend] = step()
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {b: [] for b in backends}
    for _ in range(repeats):  # round-robin, so background load hits every backend alike
        for backend in backends:
            set_attention_backend(unet, backend)
            if device == "cuda":
                torch.cuda.synchronize()  # nothing queued before the clock starts
            start = time.perf_counter()
            step()
            times[backend].append(time.perf_counter() - start)

    baseline = statistics.median(times["math"])
    results = []
    for backend in backends:
        q1, median, q3 = statistics.quantiles(times[backend], n=4, method="inclusive")
        # Steps i of two backends ran back to back, so their ratio cancels slow drifts in load.
        paired = [m / t for m, t in zip(times["math"], times[backend])]
        r1, ratio, r3 = statistics.quantiles(paired, n=4, method="inclusive")
        results.append(
            {
                "backend": backend,
                "median_ms": round(median * 1e3, 2),
                "iqr_ms": round((q3 - q1) * 1e3, 2),
                "speedup_vs_math": round(baseline / median, 3),
                "paired_speedup_median": round(ratio, 3),
                "paired_speedup_iqr": [round(r1, 3), round(r3, 3)],
                "max_abs_diff_vs_math": (outputs[backend].float() - outputs["math"].float())
                .abs()
                .max()
                .item(),
                "times_ms": [round(t * 1e3, 2) for t in times[backend]],
            }
        )
    return {
        "name": model["name"],
        "parameters": sum(p.numel() for p in unet.parameters()),
        "batch": batch,
        "text_tokens": model["text_tokens"],
        "config": config,
        "results": results,
    }


def _markdown(record: dict) -> str:
    machine, versions = record["machine"], record["versions"]
    lines = [
        f"# Attention backends: one UNet forward step ({record['device']}, {record['dtype']})",
        "",
        f"{record['warmup']} warm-up and {record['repeats']} timed steps per backend, interleaved. "
        "Speed-up: the `math` median over the backend's median, measured in the same run. Paired "
        "speed-up: the median over steps i of `math` step i / backend step i, which ran back to back.",
        "",
        "| model | input | backend | median ms | IQR ms | speed-up vs math | paired speed-up (IQR) | max abs diff vs math |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for m in record["models"]:
        c = m["config"]
        shape = f"{m['batch']}x{c['in_channels']}x{c['sample_size']}x{c['sample_size']}, {m['text_tokens']} tokens"
        for r in m["results"]:
            low, high = r["paired_speedup_iqr"]
            lines.append(
                f"| {m['name']} ({m['parameters'] / 1e6:.1f}M) | {shape} | {r['backend']} | {r['median_ms']:.1f} "
                f"| {r['iqr_ms']:.1f} | {r['speedup_vs_math']:.2f}x | {r['paired_speedup_median']:.2f}x "
                f"({low:.2f}-{high:.2f}) | {r['max_abs_diff_vs_math']:.1e} |"
            )
    lines.append("")
    for name, info in record["backends"].items():
        if not info["available"]:
            lines.append(f"Not measured: {name}: {info['detail']}.")
    load = machine["load_average_1min"]
    gpu = f", {machine['gpu']}" if machine["gpu"] else ""
    lines += [
        "",
        f"Command: `{record['command']}`  ",
        f"Machine: {machine['platform']}, {machine['processor']}, {machine['cpu_cores']} cores, "
        f"torch threads: {machine['torch_threads']}{gpu}  ",
        f"Load average (1 min) before / after: {load['before']:.1f} / {load['after']:.1f}. Other "
        "processes shared the machine, so absolute times are noisy; the paired speed-ups are the "
        "numbers to read.  ",
        f"Versions: torch {versions['torch']}, diffusers {versions['diffusers']}, Python {versions['python']}  ",
        f"Date: {record['date']}",
        "",
    ]
    return "\n".join(lines)


def _write(record: dict, out_dir: Path, stem: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = _markdown(record)
    print(markdown)
    (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown)
    print(f"wrote {out_dir / stem}.json and .md")


if __name__ == "__main__":
    main()
