"""Did the world VLM learn the steps of the experimental ``relate`` task?

``relate`` (:data:`selfcorrect.critics.prompts.LOCATED`) answers "is the A left of the B? Find
both objects first." in three steps: both centres along the relation's axis, the relation their
order makes, then Yes / No. For every relation question of the first ``--scenes`` val renders:

* greedy answers: how far the written centres are from the true ones (share of the image side),
  whether the stated relation and the final answer are right;
* the same steps teacher-forced (``VLM.score``): given the *true* centres, is the right relation
  likelier than its opposite; given the whole true look, is the right answer likelier;
* for comparison, the centre of the first box the model gives for A when asked to ground it
  (``Find every A. Answer with bounding boxes.``), along the same axis.

    python benchmarks/relate_steps_probe.py --vlm runs/vlm12/model-1200 --json benchmarks/results/relate_steps_probe.json
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

from _report import machine_line, publish

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_LOOK = re.compile(
    r"From the (left|top): the (.+) at (\d+), the (.+) at (\d+)\. The (.+) is (left of|right of|above|below) "
    r"the (.+)\. (Yes|No)\."
)


def probe(vlm, scenes: int) -> dict:
    """The greedy and teacher-forced measures of the module docstring for one VLM."""
    import torch

    from selfcorrect.critics import prompts as P
    from selfcorrect.critics.parsing import parse_boxes
    from selfcorrect.world.conversations import grounding_prompt, located_answer, vqa_prompt
    from selfcorrect.world.data import relation_parts
    from selfcorrect.world.scene import relative_position
    from selfcorrect.world.vlm_eval import rendered_samples

    def named(phrase, objects):
        *attributes, shape = phrase.split()
        return [o for o in objects if o.shape == shape and all(w in (o.colour, o.size) for w in attributes)]

    jobs = []  # (image, prompt, phrase A, object A, object B, relation, truth, the true answer)
    for s in rendered_samples("val", scenes):
        for qa in s.qa:
            if qa.kind != "relation":
                continue
            a, relation, b = relation_parts(qa.question)
            (obj_a,), (obj_b,) = named(a, s.objects), named(b, s.objects)
            truth = located_answer(
                a, obj_a.box, relation, b, obj_b.box, relative_position(obj_a.box, obj_b.box)
            )
            prompt = P.LOCATE_FIRST.format(question=vqa_prompt(qa.question))
            jobs.append((s.image, prompt, a, obj_a, obj_b, relation, qa.answer == "yes", truth))
    images, prompts = [j[0] for j in jobs], [j[1] for j in jobs]
    axis_of = [0 if j[5] in ("left of", "right of") else 1 for j in jobs]

    def centre(box, axis):
        return (box[axis] + box[axis + 2]) / 2

    # greedy
    answers = vlm.chat(images, prompts, max_new_tokens=64)
    errors, stated_right, final_right, parsed = [], 0, 0, 0
    for (_, _, _, obj_a, obj_b, relation, truth, _), axis, text in zip(jobs, axis_of, answers):
        m = _LOOK.fullmatch(text.strip())
        if m is None:
            continue
        parsed += 1
        _, _, pa, _, pb, _, stated, _, final = m.groups()
        errors += [abs(int(pa) / 100 - centre(obj_a.box, axis)), abs(int(pb) / 100 - centre(obj_b.box, axis))]
        stated_right += (stated == relation) == truth
        final_right += (final == "Yes") == truth
    # teacher-forced
    heads, stated, looks = [], [], []
    for _, _, a, _, _, _, _, full in jobs:
        head, said = re.match(rf"(.* The {re.escape(a)} is) (left of|right of|above|below) ", full).groups()
        heads.append(head)
        stated.append(said)
        looks.append(full.rsplit(" ", 1)[0])
    rel = vlm.score(images, prompts, [[f"{h} {r}", f"{h} {OPPOSITE[r]}"] for h, r in zip(heads, stated)])
    ans = vlm.score(images, prompts, [[f"{look} {P.YES}", f"{look} {P.NO}"] for look in looks])
    truths = torch.tensor([j[6] for j in jobs])
    said_yes = ans[:, 0] > ans[:, 1]
    # grounding's centre of A, along the same axis
    grounded = vlm.chat(images, [grounding_prompt(j[2]) for j in jobs], max_new_tokens=40)
    box_errors = [
        abs(centre(boxes[0], axis) - centre(j[3].box, axis))
        for j, axis, boxes in zip(jobs, axis_of, (parse_boxes(t) for t in grounded))
        if boxes
    ]
    n = len(jobs)
    return {
        "questions": n,
        "greedy": {
            "parsed": parsed,
            "centre_error_median": round(statistics.median(errors), 3) if errors else None,
            "centre_within_0.05": round(sum(e < 0.05 for e in errors) / len(errors), 3) if errors else None,
            "stated_relation_right": round(stated_right / n, 3),
            "answer_right": round(final_right / n, 3),
        },
        "teacher_forced": {
            "relation_right_given_true_centres": round((rel[:, 0] > rel[:, 1]).float().mean().item(), 3),
            "answer_right_given_true_look": round((said_yes == truths).float().mean().item(), 3),
            "yes_share_given_true_look": round(said_yes.float().mean().item(), 3),
        },
        "grounding_centre_error_median": round(statistics.median(box_errors), 3) if box_errors else None,
        "grounding_answers_with_a_box": len(box_errors),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vlm", action="append", required=True, help="model folder (repeatable)")
    p.add_argument("--scenes", type=int, default=100, help="val scenes whose relation questions are asked")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from selfcorrect.vision.vlm import VLM

    started = time.perf_counter()
    rows = [{"vlm": v, **probe(VLM.from_pretrained(v), args.scenes)} for v in args.vlm]
    command = "python benchmarks/relate_steps_probe.py " + " ".join(
        [f"--vlm {v}" for v in args.vlm] + [f"--scenes {args.scenes}"]
    )
    lines = [
        "# Did the world VLM learn the steps of the relate task?",
        "",
        f"`{command}`",
        "",
        f"{machine_line(started)} Relation questions of val renders asked with "
        "`Find both objects first.`; centre errors in shares of the image side, along the relation's axis.",
        "",
        "| VLM | questions | greedy: centre error (median) | within 0.05 | stated relation right | answer right "
        "| forced: relation given true centres | forced: answer given true look (Yes share) "
        "| grounding box centre error (median) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        g, f = r["greedy"], r["teacher_forced"]
        lines.append(
            f"| `{r['vlm']}` | {r['questions']} | {g['centre_error_median']} | {g['centre_within_0.05']} | "
            f"{g['stated_relation_right']} | {g['answer_right']} | {f['relation_right_given_true_centres']} | "
            f"{f['answer_right_given_true_look']} ({f['yes_share_given_true_look']}) | "
            f"{r['grounding_centre_error_median']} |"
        )
    publish(lines, args.json, {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
