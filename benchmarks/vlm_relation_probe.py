"""Why the world VLM cannot answer relation questions: where the relation is lost.

The world VLM answers every yes/no relation question ("Is the red circle left of the blue
square?") the same way. This probe asks, for a VLM folder, how far the relation gets:

1. **Input**: a ridge readout of "A is left of B" (and "A is above B") from the image tokens the
   language model receives (the projector's output, ``hidden_states[0]`` at the image positions)
   of the two objects' centre patches. High accuracy means the positions are there to compare.
2. **Answer state**: a ridge readout of the yes/no truth of the question from the language model's
   state at the last prompt position, per layer. Chance means the model never computes it. Beside
   it, the same readout of the **order** alone (whether A comes first along the asked axis, i.e.
   the truth of the question asked with the axis's first word, "left of" / "above"): the half of
   the answer that the question's word does not give.
3. **Answers**: the greedy answers to the same questions (accuracy and share of "Yes"), split by
   the word asked (the axis's first word, or its opposite), and to the same questions about two
   objects alone in the image, far apart (no clutter, no finding among several).

Readouts are fitted on 3/4 of the items and scored on the rest (closed-form ridge, standardised
features, targets +-1).

    python benchmarks/vlm_relation_probe.py --vlm selfcorrect/weights/world-vlm \\
        --json benchmarks/results/vlm_relation_probe.json
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path

from _report import machine_line, publish


@dataclass
class Item:
    """A relation question about objects ``a`` and ``b`` of ``image``; ``holds`` is its truth."""

    image: object
    question: str
    holds: bool
    a: object
    b: object


def _name(obj, objects) -> str | None:
    """``"red circle"`` (or ``"large red circle"``) when that names ``obj`` alone, else None."""
    for size in (None, obj.size):
        fits = [
            o for o in objects if o.colour == obj.colour and o.shape == obj.shape and size in (None, o.size)
        ]
        if fits == [obj]:
            return " ".join(w for w in (size, obj.colour, obj.shape) if w)
    return None


def scene_items(split: str, scenes: int, seed: int = 0) -> list[Item]:
    """For each scene of ``split`` with a pair in a relation: the relation asked, and its opposite."""
    from selfcorrect.world.data import OPPOSITE
    from selfcorrect.world.scene import relative_position
    from selfcorrect.world.vlm_eval import rendered_samples

    rng, items = random.Random(seed), []
    for s in rendered_samples(split, scenes):
        pairs = [
            (a, b, rels)
            for a in s.objects
            for b in s.objects
            if a is not b and _name(a, s.objects) and _name(b, s.objects)
            for rels in [relative_position(a.box, b.box)]
            if rels
        ]
        if not pairs:
            continue
        a, b, rels = rng.choice(pairs)
        asked = rng.choice(sorted(rels))
        for relation in (asked, OPPOSITE[asked]):
            question = f"Is the {_name(a, s.objects)} {relation} the {_name(b, s.objects)}?"
            items.append(Item(s.image, question, relation in rels, a, b))
    return items


def lone_pair_items(n: int, seed: int = 0) -> list[Item]:
    """``n`` questions about two objects alone, side by side or one over the other, far apart."""
    from selfcorrect.world.render import render
    from selfcorrect.world.scene import COLOURS, SHAPES, Scene, WorldObject
    from selfcorrect.world.suites import HELDOUT_COMBOS

    rng, items = random.Random(seed), []
    while len(items) < n:
        (ca, sa), (cb, sb) = [(rng.choice(COLOURS), rng.choice(SHAPES)) for _ in range(2)]
        if (ca, sa) in HELDOUT_COMBOS or (cb, sb) in HELDOUT_COMBOS or (ca, sa) == (cb, sb):
            continue
        near, far, across = rng.uniform(0.05, 0.2), rng.uniform(0.6, 0.75), rng.uniform(0.3, 0.5)
        horizontal = rng.random() < 0.5
        box = (
            (lambda u, v: (u, v, u + 0.2, v + 0.2)) if horizontal else (lambda u, v: (v, u, v + 0.2, u + 0.2))
        )
        a = WorldObject(sa, ca, "small", box(near, across))
        b = WorldObject(sb, cb, "small", box(far, across))
        if rng.random() < 0.5:
            a, b = b, a
        first = (a.box[0] < b.box[0]) if horizontal else (a.box[1] < b.box[1])
        relation = rng.choice(("left of", "right of") if horizontal else ("above", "below"))
        holds = first == (relation in ("left of", "above"))
        question = f"Is the {ca} {sa} {relation} the {cb} {sb}?"
        items.append(Item(render(Scene((a, b))), question, holds, a, b))
    return items


def _first_word(question: str) -> bool:
    """Whether ``question`` asks the first word of its axis ("left of", "above")."""
    return " left of " in question or " above " in question


def _patch(box, grid: int) -> int:
    """Index (raster order) of the patch holding the box's centre."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return min(int(cy * grid), grid - 1) * grid + min(int(cx * grid), grid - 1)


def states(model, processor, items: list[Item], batch_size: int = 32):
    """``(inputs, answers)``: per item the two centre-patch image tokens the LM receives, concatenated
    ``(N, 2 * D)``, and the LM's state at the last prompt position after each layer
    ``(layers + 1, N, D)``."""
    import torch

    token_id = model.config.image_token_id
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    pairs, last = [], []
    processor.tokenizer.padding_side = "left"
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        texts = [
            processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": it.question}]}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for it in chunk
        ]
        inputs = processor(images=[it.image for it in chunk], text=texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            hidden = model(**inputs, output_hidden_states=True).hidden_states  # (layers + 1) x (B, T, D)
        for i, it in enumerate(chunk):
            image_positions = (inputs["input_ids"][i] == token_id).nonzero().flatten()
            a, b = (image_positions[_patch(o.box, grid)] for o in (it.a, it.b))
            pairs.append(torch.cat([hidden[0][i, a], hidden[0][i, b]]))
        last.append(torch.stack([h[:, -1] for h in hidden]))
    return torch.stack(pairs), torch.cat(last, dim=1)


def ridge_accuracy(x, y) -> float:
    """Held-out accuracy of a ridge classifier (3/4 fit, 1/4 scored); ``y`` booleans."""
    import torch

    x = torch.cat([(x - x.mean(0)) / (x.std(0) + 1e-6), torch.ones(len(x), 1)], 1)
    t = torch.tensor(y, dtype=torch.float32) * 2 - 1
    n = len(x) * 3 // 4
    w = torch.linalg.solve(x[:n].T @ x[:n] + 10 * torch.eye(x.shape[1]), x[:n].T @ t[:n])
    return round(((x[n:] @ w > 0) == (t[n:] > 0)).float().mean().item(), 3)


def probe(folder: str, scenes: int, lone: int) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from selfcorrect.vision.vlm import VLM
    from selfcorrect.world.vlm_eval import is_right

    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    items = scene_items("test", scenes)
    inputs, last = states(model, processor, items)
    # "A left of B" from the two tokens: over the questions about a horizontal relation
    out: dict = {"model": folder, "questions": len(items)}
    for name, axis in (("left_of", 0), ("above", 1)):
        keep = [
            i
            for i, it in enumerate(items)
            if abs((it.a.box[axis] + it.a.box[axis + 2]) - (it.b.box[axis] + it.b.box[axis + 2])) > 0.2
        ]
        truth = [items[i].a.box[axis] < items[i].b.box[axis] for i in keep]
        out[f"input_{name}"] = ridge_accuracy(inputs[keep], truth)
    holds = [it.holds for it in items]
    out["answer_state_by_layer"] = [ridge_accuracy(layer, holds) for layer in last]
    order = [it.holds == _first_word(it.question) for it in items]  # A first along the asked axis
    out["order_state_by_layer"] = [ridge_accuracy(layer, order) for layer in last]
    vlm = VLM.from_pretrained(folder)
    for name, group in (("scenes", items), ("lone_pairs", lone_pair_items(lone))):
        answers = vlm.chat([it.image for it in group], [it.question for it in group], max_new_tokens=4)
        right = [is_right(a, "Yes" if it.holds else "No") for a, it in zip(answers, group)]
        out[f"answers_{name}"] = {
            "n": len(group),
            "accuracy": round(sum(right) / len(group), 3),
            "yes_share": round(sum(is_right(a, "Yes") for a in answers) / len(group), 3),
        }
        for word, label in ((True, "first_word"), (False, "opposite_word")):
            mine = [r for r, it in zip(right, group) if _first_word(it.question) == word]
            out[f"answers_{name}"][label] = round(sum(mine) / max(1, len(mine)), 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vlm", action="append", required=True, help="a world VLM folder (repeatable)")
    p.add_argument("--scenes", type=int, default=400, help="test scenes to ask about")
    p.add_argument("--lone", type=int, default=200, help="questions about two lone objects")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    started = time.perf_counter()
    rows = [probe(folder, args.scenes, args.lone) for folder in args.vlm]
    command = "python benchmarks/vlm_relation_probe.py " + " ".join(
        [f"--vlm {v}" for v in args.vlm] + [f"--scenes {args.scenes} --lone {args.lone}"]
    )
    lines = [
        "# Where the world VLM loses relations",
        "",
        f"`{command}`",
        "",
        f"{machine_line(started)} Held-out ridge accuracy (chance 0.5) of: A left of / above B "
        "from the two objects' centre image tokens as the LM receives them; the question's truth from the "
        "LM's state at the last prompt position, after each layer (0 = the embeddings), and from the same "
        "state whether A comes first along the asked axis (the order, without the word). Greedy answers: on "
        "the test scenes (and split by the word asked: the axis's first word `left of` / `above`, or its "
        "opposite), and on two objects alone, far apart.",
        "",
        "| model | questions | input: left of | input: above | answer state by layer | order state by layer "
        "| answers: accuracy (Yes share) | first word / opposite | lone pairs: accuracy (Yes share) |",
        "|---|---:|---:|---:|---|---|---:|---|---:|",
    ]
    for r in rows:
        s, lone = r["answers_scenes"], r["answers_lone_pairs"]
        lines.append(
            f"| `{r['model']}` | {r['questions']} | {r['input_left_of']:.3f} | {r['input_above']:.3f} | "
            f"{' / '.join(f'{v:.2f}' for v in r['answer_state_by_layer'])} | "
            f"{' / '.join(f'{v:.2f}' for v in r['order_state_by_layer'])} | "
            f"{s['accuracy']:.3f} ({s['yes_share']:.2f}) | {s['first_word']:.2f} / {s['opposite_word']:.2f} | "
            f"{lone['accuracy']:.3f} ({lone['yes_share']:.2f}) |"
        )
    publish(lines, args.json, {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
