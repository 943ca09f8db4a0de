"""How often the world VLM's ``image_pairwise`` training pairs tie, before and after
:data:`selfcorrect.world.conversations.IMAGE_TIE_SHARE`.

*Before*: two images drawn independently for one prompt, each asked to fail half the time (the
old ``_image_pairwise``, replayed here with :meth:`ConversationSet._judged_image`). *Now*: the
verdicts of the ``image_pairwise`` task as :class:`ConversationSet` makes it. Both on renders
alone and with the pool of generated images the VLM is trained with:

    python -m selfcorrect.train.generated_pool --output runs/generated --images 640
    python benchmarks/image_pair_ties.py --generated runs/generated \\
        --json benchmarks/results/image_pair_ties.json
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from _report import machine_line, publish


def tie_shares(generated, pairs: int, seed: int = 0) -> dict:
    """Tie shares of independent draws (``pairs`` of them) and of the task's pairs (``pairs``)."""
    from selfcorrect.critics import prompts as P
    from selfcorrect.world.conversations import ConversationSet, score_of

    ds = ConversationSet(pairs, seed=seed, generated=generated, mix={"image_pairwise": 1.0})
    rng, ties = random.Random(seed), 0
    for _ in range(pairs):
        prompt = rng.choice(ds.prompts)
        first = ds._judged_image(rng, prompt, fail=rng.random() < 0.5)
        second = ds._judged_image(rng, first[2], fail=rng.random() < 0.5)
        ties += score_of(first[1]) == score_of(second[1])
    verdicts = [ds[i].messages[-1]["content"][0]["text"] for i in range(pairs)]
    now = sum(v.startswith(P.TIE_IMAGES) for v in verdicts)
    return {"pairs": pairs, "independent": ties / pairs, "task": now / pairs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--generated", type=Path, default=None, help="a generated_pool folder")
    p.add_argument("--pairs", type=int, default=400)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from selfcorrect.train.generated_pool import load_pool

    started = time.perf_counter()
    sources = [("renders only", None)]
    if args.generated:
        sources.append(("renders and generated images (as trained)", load_pool(args.generated)))
    rows = [{"images": name, **tie_shares(pool, args.pairs)} for name, pool in sources]
    command = "python benchmarks/image_pair_ties.py"
    command += f" --generated {args.generated}" if args.generated else ""
    command += f" --pairs {args.pairs}"
    lines = [
        "# Ties among the world VLM's image-pair training examples",
        "",
        f"`{command}`",
        "",
        f"{machine_line(started)} Share of pairs whose two images score the same against the "
        "prompt (oracle labels): drawn independently (before `IMAGE_TIE_SHARE`) and as the "
        "`image_pairwise` task draws them now.",
        "",
        "| images | pairs | ties, independent draws | ties, the task now |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['images']} | {r['pairs']} | {r['independent']:.3f} | {r['task']:.3f} |")
    publish(lines, args.json, {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
