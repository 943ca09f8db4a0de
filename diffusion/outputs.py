"""What a correction run leaves on disk: the final image, the trace, a contact sheet, preference pairs.

Per prompt, in its output folder:

* ``image.png``: the best image (the one the critic scored highest; never worse than the first);
* ``trace.json``: the :class:`~selfcorrect.diffusion.loop.Trace` plus what ran (pipeline,
  attention backend, critic, detector);
* ``rounds.png``: a contact sheet, one column per image the loop made, with the detections it
  planned from (thin, white) and the edit targets (thick, coloured by operation) drawn on the
  image before the edit, and the critic's scores written under each.

Preference pairs go to a shared folder as JSON lines (one file per process, so that parallel
workers never write the same file) with the two images beside them: every round makes one pair,
the image the critic preferred as ``chosen`` and the other as ``rejected``, with the critic's
evidence. :func:`load_pairs` reads them as a :class:`datasets.Dataset` with image columns.
"""

from __future__ import annotations

import json
from pathlib import Path

from selfcorrect.io import save_image, write_json

OP_COLOURS = {"add": (0, 160, 0), "delete": (220, 0, 0), "move": (0, 90, 230), "recolour": (200, 120, 0)}
CELL = 192  # pixels per image in the contact sheet


def contact_sheet(trace):
    """A ``PIL.Image`` of the rounds (see the module docstring)."""
    from PIL import Image, ImageDraw

    n = len(trace.images)
    label_h = 44
    sheet = Image.new("RGB", (n * CELL, CELL + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, image in enumerate(trace.images):
        cell = image.convert("RGB").resize((CELL, CELL), Image.NEAREST)
        cd = ImageDraw.Draw(cell)
        # The detections and plan of round k+1 were made on image k (when it was current).
        rounds = [r for r in trace.rounds if r.get("plan") and r["input"] == k]
        for r in rounds[:1]:
            for boxes in r.get("detections", {}).values():
                for d in boxes:
                    cd.rectangle(_px(d["box"]), outline=(255, 255, 255), width=1)
            for op in r["plan"]:
                colour = OP_COLOURS[op["kind"]]
                if op["source"]:
                    cd.rectangle(_px(op["source"]), outline=colour, width=1)
                if op["target"]:
                    cd.rectangle(_px(op["target"]), outline=colour, width=3)
                    x0, y0 = _px(op["target"])[:2]
                    cd.text((x0 + 3, y0 + 2), f"{op['kind']} {op['phrase']}", fill=colour)
        sheet.paste(cell, (k * CELL, 0))
        score = trace.scores[k]
        made = next((r for r in trace.rounds if r.get("image") == k), None)  # None for the first image
        title = "first" if made is None else f"round {made['round']}"
        state = "best" if k == trace.best else ("rolled back" if made and not made["accepted"] else "")
        draw.text(
            (k * CELL + 4, CELL + 4),
            f"{title}  score {score:.3f}" if score is not None else title,
            fill="black",
        )
        draw.text((k * CELL + 4, CELL + 22), state, fill=(0, 120, 0) if state == "best" else (180, 0, 0))
    return sheet


def write_outputs(trace, folder: Path, record: dict) -> Path:
    """Write ``image.png``, ``rounds.png`` and ``trace.json`` (last: its presence marks a done prompt)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_image(trace.final.image, folder / "image.png")
    save_image(contact_sheet(trace), folder / "rounds.png")
    write_json(
        folder / "trace.json", {**record, **trace.to_dict(), "image": "image.png", "sheet": "rounds.png"}
    )
    return folder / "trace.json"


def append_pairs(trace, folder: Path, critic: str, rank: int = 0) -> int:
    """Append this trace's before/after pairs to ``folder/pairs-{rank}.jsonl``; returns how many.

    A round that made an image gives one pair: the image it started from and the edited one,
    ordered by the critic's score (ties give no pair). Images are saved as PNG beside the file.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for r in trace.rounds:
        if "image" not in r:  # a round that made no image
            continue
        index, k = r["input"], r["image"]
        before, after = trace.scores[index], trace.scores[k]
        if before is not None and after is not None and before != after:
            win, lose = (k, index) if after > before else (index, k)
            stem = f"{slug(trace.prompt)}-s{trace.seed}-r{r['round']}"
            chosen = save_image(trace.images[win], folder / "images" / f"{stem}-chosen.png")
            rejected = save_image(trace.images[lose], folder / "images" / f"{stem}-rejected.png")
            failed = [f["requirement"] for f in r["critique"].get("findings", []) if not f["passed"]]
            rows.append(
                {
                    "prompt": trace.prompt,
                    "chosen": str(chosen.relative_to(folder)),
                    "rejected": str(rejected.relative_to(folder)),
                    "chosen_score": max(before, after),
                    "rejected_score": min(before, after),
                    "critic": critic,
                    "evidence": "; ".join(failed) or r["critique"].get("explanation", ""),
                    "edits": [f"{op['kind']} {op['phrase']}" for op in r["plan"]],
                    "accepted": bool(r["accepted"]),
                    "seed": trace.seed,
                    "round": r["round"],
                }
            )
    with open(folder / f"pairs-{rank}.jsonl", "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return len(rows)


def load_pairs(folder: str | Path):
    """The pairs in ``folder`` as a ``datasets.Dataset`` with ``chosen``/``rejected`` image columns."""
    import datasets

    folder = Path(folder).resolve()
    files = sorted(str(p) for p in folder.glob("pairs-*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no preference pairs (pairs-*.jsonl) in {folder}")
    data = datasets.load_dataset("json", data_files=files, split="train")
    data = data.map(
        lambda row: {"chosen": str(folder / row["chosen"]), "rejected": str(folder / row["rejected"])}
    )
    return data.cast_column("chosen", datasets.Image()).cast_column("rejected", datasets.Image())


def _px(box) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (round(v * CELL) for v in box)
    return x0, y0, max(x0 + 1, x1 - 1), max(y0 + 1, y1 - 1)


def slug(text: str) -> str:
    words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
    return "-".join(words)[:60] or "prompt"
