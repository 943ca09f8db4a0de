"""How many following tokens should the TLDR head read? A sweep on one run's cached features.

The backbone is frozen and causal, so its state at a token has not read what follows it
(:func:`selfcorrect.critics.tldr.look_ahead`). For each ``--ahead`` value this trains the cpu
profile's head (features, MLP width, steps and seed of ``python -m selfcorrect.train.tldr``) on
the train features that run cached in ``RUN/features``, picks its threshold on val and measures it
on val and test: the same data for every row, only the window differs. Choose the window on val.

    python benchmarks/tldr_look_ahead.py --run runs/tldr8 --ahead 0 1 2 3 4 6 --json benchmarks/results/tldr_look_ahead.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _report import machine_line, publish


def load_split(run: Path, split: str) -> dict:
    """The cached features of ``split`` (every process's shard, concatenated)."""
    from safetensors.torch import load_file

    from selfcorrect.train.tldr import _concat

    shards = sorted((run / "features").glob(f"{split}-*.safetensors"))
    if not shards:
        raise SystemExit(
            f"{run}/features has no {split} features: run python -m selfcorrect.train.tldr first"
        )
    parts = []
    for path in shards:
        meta = json.loads(path.with_name(path.name + ".json").read_text())
        parts.append({**load_file(str(path)), "responses": meta["responses"]})
    return _concat(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--run", type=Path, required=True, help="an OUTPUT_DIR of python -m selfcorrect.train.tldr"
    )
    p.add_argument("--ahead", type=int, nargs="+", default=[0, 1, 2, 3, 4, 6])
    p.add_argument("--profile", default="cpu", help="the training profile whose head is trained")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from accelerate import Accelerator

    from selfcorrect.train import tldr as T

    started = time.perf_counter()
    caches = {split: load_split(args.run, split) for split in ("train", "val", "test")}
    config = T.run_config(T.PROFILES, args.profile)
    accelerator = Accelerator()
    rows = []
    for ahead in args.ahead:
        tick = time.perf_counter()
        head, _ = T.train_head(accelerator, caches["train"], config.features, config, args.seed, ahead=ahead)
        threshold, _ = T._calibrate(head, caches["val"], accelerator.device)
        val = T.evaluate_rewards(
            T.responses_of(caches["val"]),
            T.cached_rewards(head, caches["val"], accelerator.device),
            threshold,
        )
        rewards = T.cached_rewards(head, caches["test"], accelerator.device)
        m = T.evaluate_rewards(T.responses_of(caches["test"]), rewards, threshold)
        rows.append(
            {
                "ahead": ahead,
                "parameters": sum(t.numel() for t in head.parameters()),
                "threshold": threshold,
                "val_token_auroc": val["token_auroc"],
                **{k: m[k] for k in ("token_auroc", "response_auroc", "pair_accuracy", "response_accuracy")},
                "token_auroc_by_kind": {k: v["token_auroc"] for k, v in m["by_kind"].items() if k != "none"},
                "seconds": round(time.perf_counter() - tick, 1),
            }
        )
        print(rows[-1], flush=True)

    command = (
        f"python benchmarks/tldr_look_ahead.py --run {args.run} --ahead {' '.join(map(str, args.ahead))}"
    )
    if args.profile != "cpu" or args.seed:
        command += f" --profile {args.profile} --seed {args.seed}"
    data = {split: (len(c["responses"]), len(c["labels"])) for split, c in caches.items()}
    kinds = sorted(rows[0]["token_auroc_by_kind"])
    lines = [
        "# TLDR head: how many following tokens it reads",
        "",
        f"`{command}`",
        "",
        f"{machine_line(started)} Head of the `{args.profile}` profile ({config.features}, "
        f"MLP {config.mlp}, {config.steps} steps, seed {args.seed}) on the features cached by "
        f"`{args.run}` (backbone `{json.loads((args.run / 'head' / 'config.json').read_text())['backbone']}`"
        f" as it was then); train / val / test responses (tokens): "
        + ", ".join(f"{n} ({t})" for n, t in data.values())
        + ". Threshold chosen on val, and the window should be too (its val token AUROC is the second "
        "column); 0 is TLDR's head (the token's own state).",
        "",
        "| next tokens read | parameters | val: token AUROC | token AUROC | response AUROC | pair accuracy | response accuracy | "
        + " | ".join(f"token AUROC: {k}" for k in kinds)
        + " |",
        "|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(kinds),
    ]
    for r in rows:
        lines.append(
            f"| {r['ahead']} | {r['parameters']} | {r['val_token_auroc']:.3f} | {r['token_auroc']:.3f} | {r['response_auroc']:.3f} | "
            f"{r['pair_accuracy']:.3f} | {r['response_accuracy']:.3f} | "
            + " | ".join(f"{r['token_auroc_by_kind'][k]:.3f}" for k in kinds)
            + " |"
        )
    publish(lines, args.json, {"command": command, "data": data, "rows": rows})


if __name__ == "__main__":
    main()
