"""Does a VLM's VISCO critique use LookBack's evidence? A log-prob probe on training-style chains.

World reasoning chains (:func:`selfcorrect.world.conversations._chain`, about half with one wrong
step, as the ``critique`` training task builds them) are judged with
:class:`~selfcorrect.critics.lookback.LookBackCritic` in log-prob mode, once with the *exact*
evidence bullets the training task shows (the visual question that checks each step as shown,
with its true answer: :meth:`~selfcorrect.world.conversations._Shown.evidence`) and once with
none. The AUROC of P(incorrect) over the steps says how well the critique tells wrong steps from
right ones; if the evidence is read, the first beats the second.

    python benchmarks/lookback_evidence_probe.py --vlm selfcorrect/weights/world-vlm \\
        --json benchmarks/results/lookback_evidence_probe.json
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from _report import machine_line, publish


def probe(vlm, chains: int, seed: int = 1) -> dict:
    """Step AUROC of 1 - P(correct) with the exact evidence and without any."""
    from selfcorrect.critics import prompts as P
    from selfcorrect.critics.lookback import LookBackCritic
    from selfcorrect.world.conversations import _chain
    from selfcorrect.world.critic_eval import auroc
    from selfcorrect.world.data import WorldDataset

    critic = LookBackCritic(vlm, mode="logprob")
    data = WorldDataset(chains, seed=seed, canvas=64, caption_styles=())
    wrong, scores = [], {"evidence": [], "none": []}
    for i in range(chains):
        item = data[i]
        chain = _chain(list(item["scene"].objects), random.Random(f"lookback-probe:{i}"))
        shown, verdict = chain.with_errors(random.Random(f"lookback-probe:errors:{i}"))
        wrong += [not verdict[f"step_{k + 1}"]["correctness"] for k in range(len(shown.steps))]
        bullets = shown.evidence()
        steps = "\n".join(f"Step {k + 1}: {t}" for k, t in enumerate(shown.steps))
        for name, evidence in (("evidence", P.EVIDENCE.format(bullets=bullets)), ("none", "")):
            prompt = P.CRITIQUE.format(
                question=chain.question, steps=steps, answer=shown.answer, evidence=evidence
            )
            judged = critic.judge(item["image"], prompt, len(shown.steps))
            scores[name] += [1.0 - p for p in judged.step_probabilities]
    return {
        "chains": chains,
        "steps": len(wrong),
        "wrong_steps": sum(wrong),
        **{f"auroc_{name}": round(auroc(wrong, s), 3) for name, s in scores.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vlm", action="append", required=True, help="a VLM folder or 'world' (repeatable)")
    p.add_argument("--chains", type=int, default=60)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from selfcorrect.vision.vlm import VLM

    started = time.perf_counter()
    rows = [{"vlm": v, **probe(VLM.from_pretrained(v), args.chains)} for v in args.vlm]
    command = "python benchmarks/lookback_evidence_probe.py " + " ".join(f"--vlm {v}" for v in args.vlm)
    command += f" --chains {args.chains}"
    lines = [
        "# Does the critique read LookBack's evidence?",
        "",
        f"`{command}`",
        "",
        f"{machine_line(started)} Step AUROC of P(incorrect) in log-prob mode, on "
        "training-style chains with the exact evidence bullets and without any.",
        "",
        "| VLM | chains | steps | wrong steps | AUROC with exact evidence | AUROC without |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['vlm']}` | {r['chains']} | {r['steps']} | {r['wrong_steps']} | "
            f"{r['auroc_evidence']:.3f} | {r['auroc_none']:.3f} |"
        )
    publish(lines, args.json, {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
