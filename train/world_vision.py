"""Pretrain the world VLM's vision tower on dense labels of world images, before the VLM reads it.

**Why.** A world VLM trained end to end on 2 CPU cores learned the answer priors long before it
learned to read its image tokens: its loss on right and on shuffled images differed by 0.01 nats
after 800 steps (see ``selfcorrect/weights/world-vlm/README.md``). The language-model loss is a
weak, slow signal for the tower. LLaVA avoids the problem by starting from a vision encoder that
already sees; its CLIP was trained on 400M pairs. The world's version: teach the tower, directly
and cheaply, what each of its patch tokens covers, so that the projector and the language model
only have to learn to *read* it.

**What.** Each image comes from the very sources of the VLM's conversations
(:meth:`~selfcorrect.world.conversations.ConversationSet.scene_image`: rendered and degraded
scenes with their spec, images of the world text-to-image model with the oracle's reading). Every
patch token of the tower's last layer (the one LLaVA's projector reads, ``vision_feature_layer=-1``)
goes through a linear probe (a LayerNorm and one linear layer, thrown away afterwards) that
predicts what covers the patch (:func:`patch_targets`): the colour, shape and size of the object,
or background; whether the object's centre falls in the patch (for counting); and the object's
box (for grounding and relations). The loss is :func:`dense_loss`.

Usage::

    python -m selfcorrect.train.world_vision --profile cpu --output-dir runs/world-vision \\
        --init-clip selfcorrect/weights/world-clip --generated runs/generated
    # then the VLM: a saved model's language model, this tower, a new projector
    python -m selfcorrect.train.world_vlm --profile cpu --output-dir runs/world-vlm \\
        --init-model selfcorrect/weights/world-vlm --init-vision runs/world-vision/tower

The tower lands in ``OUTPUT_DIR/tower`` (a :class:`transformers.CLIPVisionModel` folder, float32,
with ``selfcorrect_training.json``: the run's settings and its held-out probe accuracy). Its sizes
are the VLM profile's of the same name. Checkpoints are atomic and a rerun resumes, as in every
training script here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from selfcorrect.errors import SelfcorrectError
from selfcorrect.train.generated_pool import load_pool
from selfcorrect.train.world_t2i import (
    CANVAS,
    checkpoint_if_due,
    deadline_of,
    resume,
    run_config,
    run_script,
    stopped_early,
    training_parser,
)
from selfcorrect.train.world_vlm import PROFILES as VLM_PROFILES
from selfcorrect.train.world_vlm import image_processor, init_vision_from_open_clip, vision_config
from selfcorrect.world.scene import COLOURS, SHAPES, SIZES

logger = logging.getLogger(__name__)

STAGE = "vision"  # checkpoint folder prefix
EVAL_SEED_OFFSET = 1_000_003
MIN_COVER = 0.3  # a patch belongs to the object covering this share of it (its centre patch always does)
BOX_WEIGHT = 5.0  # box errors are fractions of the image side (~0.05): weighted up to matter
# Probe outputs, in this order: colour (+ background), shape (+ background), size (+ background),
# centre (1 logit), box (4 numbers).
HEADS = {"colour": len(COLOURS) + 1, "shape": len(SHAPES) + 1, "size": len(SIZES) + 1, "centre": 1, "box": 4}


@dataclass
class VisionConfig:
    """The schedule of one run (the tower's sizes are the VLM profile's).

    steps / batch_size: optimiser steps and images per step.
    lr / warmup / weight_decay: AdamW, linear warm-up, cosine decay to a tenth.
    eval_images: held-out images the probe is scored on at the end.
    """

    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.05
    num_workers: int = 1
    eval_images: int = 1024


PROFILES: dict[str, VisionConfig] = {
    "tiny": VisionConfig(steps=3, batch_size=4, warmup=1, num_workers=0, eval_images=8),
    # About 25 minutes on 2 CPU cores (1.1 s per step; the loader worker renders the batch).
    "cpu": VisionConfig(),
    "gpu": VisionConfig(steps=10000, batch_size=256, lr=5e-4, warmup=500, num_workers=8, eval_images=4096),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_parser(
        __doc__, PROFILES, "checkpoints go here; the tower in OUTPUT_DIR/tower", 250, time_limit=True
    )
    p.add_argument("--steps", type=int, default=None, help="override the profile's steps")
    p.add_argument(
        "--init-clip",
        type=Path,
        default=None,
        help="start from this open_clip folder's image tower (e.g. selfcorrect/weights/world-clip)",
    )
    p.add_argument(
        "--generated",
        type=Path,
        default=None,
        help="labelled images of the world text-to-image model (python -m selfcorrect.train.generated_pool)",
    )
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Data


def patch_targets(objects, grid: int) -> dict:
    """What covers each of the ``grid x grid`` patches of an image, in the tower's token order.

    A patch belongs to the object whose box covers the largest share of it, if that share is at
    least :data:`MIN_COVER`; the patch holding an object's box centre always belongs to it (so
    that the smallest objects own a patch). Other patches are background.

    Args:
        objects: the :class:`~selfcorrect.world.scene.WorldObject` s in the image.
        grid: patches per side.

    Returns:
        Tensors over the ``P = grid * grid`` patches, row by row (the order of CLIP's patch
        tokens): ``colour``, ``shape``, ``size`` ``(P,)`` long (the background's index is the
        last: ``len(COLOURS)`` etc.); ``centre`` ``(P,)`` float 0/1; ``box`` ``(P, 4)`` float
        (zeros on background); ``object`` ``(P,)`` bool.
    """
    import numpy as np
    import torch

    P = grid * grid
    owner = np.full((grid, grid), -1)
    if objects:
        cells = np.arange(grid)
        cover = np.zeros((len(objects), grid, grid))
        for k, o in enumerate(objects):
            x0, y0, x1, y1 = (v * grid for v in o.box)
            ox = np.clip(np.minimum(x1, cells + 1) - np.maximum(x0, cells), 0, None)  # (grid,) per column
            oy = np.clip(np.minimum(y1, cells + 1) - np.maximum(y0, cells), 0, None)  # (grid,) per row
            cover[k] = oy[:, None] * ox[None, :]
        owner = np.where(cover.max(0) >= MIN_COVER, cover.argmax(0), -1)
    centre = np.zeros((grid, grid), dtype=np.float32)
    for k, o in enumerate(objects):
        cx, cy = o.center
        row, col = min(int(cy * grid), grid - 1), min(int(cx * grid), grid - 1)
        owner[row, col] = k
        centre[row, col] = 1.0
    owner = owner.reshape(P)
    colour = torch.full((P,), len(COLOURS), dtype=torch.long)
    shape = torch.full((P,), len(SHAPES), dtype=torch.long)
    size = torch.full((P,), len(SIZES), dtype=torch.long)
    box = torch.zeros(P, 4)
    for i in np.flatnonzero(owner >= 0):
        o = objects[owner[i]]
        colour[i], shape[i], size[i] = COLOURS.index(o.colour), SHAPES.index(o.shape), SIZES.index(o.size)
        box[i] = torch.tensor(o.box, dtype=torch.float32)
    return {
        "colour": colour,
        "shape": shape,
        "size": size,
        "centre": torch.from_numpy(centre.reshape(P)),
        "box": box,
        "object": torch.from_numpy(owner >= 0),
    }


class DenseSet:
    """Map-style data set: item ``i`` (a pure function of ``(seed, i)``) is an image's pixel values
    ``(3, 64, 64)`` and its :func:`patch_targets`."""

    def __init__(self, size: int, seed: int, grid: int, generated=None):
        from selfcorrect.world.conversations import ConversationSet

        self.size, self.seed, self.grid = size, seed, grid
        self.images = ConversationSet(size, seed=seed, generated=generated)
        self.processor = image_processor()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        rng = random.Random(f"dense:{self.seed}:{index}")
        image, objects = self.images.scene_image(rng)
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        return {"pixel_values": pixels, **patch_targets(objects, self.grid)}


# ---------------------------------------------------------------------------------------------
# Model and loss


def build_probe(width: int):
    """LayerNorm + one linear layer from a patch token ``(..., width)`` to the :data:`HEADS` outputs."""
    import torch

    return torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, sum(HEADS.values())))


def patch_tokens(tower, pixel_values):
    """``(B, 3, 64, 64)`` -> the last layer's patch tokens ``(B, P, width)``, the class token dropped:
    exactly what LLaVA's projector reads with ``vision_feature_layer=-1`` and the "default" strategy."""
    return tower(pixel_values, output_hidden_states=True).hidden_states[-1][:, 1:]


def split_outputs(outputs) -> dict:
    """``(..., sum(HEADS))`` probe outputs -> ``{head: (..., HEADS[head])}`` in float32."""
    return dict(zip(HEADS, outputs.float().split(list(HEADS.values()), dim=-1)))


def dense_loss(outputs, targets: dict):
    """The probe's loss on one batch.

    Args:
        outputs: ``(B, P, sum(HEADS))`` probe outputs.
        targets: :func:`patch_targets` tensors stacked to ``(B, P, ...)``.

    Returns:
        ``(loss, parts)``: the scalar sum of the cross-entropies of colour, shape and size (every
        patch), the centre's binary cross-entropy (every patch) and :data:`BOX_WEIGHT` times the
        box's L1 error (object patches); ``parts`` the unweighted terms as floats.
    """
    import torch.nn.functional as F

    split = split_outputs(outputs)
    parts = {
        name: F.cross_entropy(split[name].flatten(0, 1), targets[name].flatten())
        for name in ("colour", "shape", "size")
    }
    parts["centre"] = F.binary_cross_entropy_with_logits(split["centre"].squeeze(-1), targets["centre"])
    on = targets["object"]  # (B, P) bool
    parts["box"] = (
        F.l1_loss(split["box"][on], targets["box"][on]) if on.any() else outputs.new_zeros(()).float()
    )
    loss = sum(parts.values()) + (BOX_WEIGHT - 1) * parts["box"]
    return loss, {k: v.item() for k, v in parts.items()}


def probe_metrics(outputs, targets: dict) -> dict:
    """Held-out accuracy of the probe: colour, shape and size on object patches, background vs
    object on all patches, centre patches found (recall and precision at 0.5), box L1 error."""
    import torch

    split = split_outputs(outputs)
    on = targets["object"]
    metrics = {
        f"{name}_accuracy": (split[name].argmax(-1) == targets[name])[on].float().mean().item()
        for name in ("colour", "shape", "size")
    }
    predicted_on = split["shape"].argmax(-1) != len(SHAPES)
    metrics["object_accuracy"] = (predicted_on == on).float().mean().item()
    centre, truth = torch.sigmoid(split["centre"].squeeze(-1)) > 0.5, targets["centre"] > 0.5
    metrics["centre_recall"] = (centre & truth).sum().item() / max(1, truth.sum().item())
    metrics["centre_precision"] = (centre & truth).sum().item() / max(1, centre.sum().item())
    metrics["box_l1"] = (split["box"][on] - targets["box"][on]).abs().mean().item()
    return {k: round(v, 4) for k, v in metrics.items()}


# ---------------------------------------------------------------------------------------------
# Training


def main(args: argparse.Namespace) -> Path | None:
    """Train (or resume) the tower and its probe; save the tower; returns its folder (None when
    ``--time-limit`` stopped it first: a checkpoint is saved and a rerun resumes)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import CLIPVisionModel

    config = run_config(PROFILES, args.profile)
    if args.steps is not None:
        config.steps = args.steps
    sizes = VLM_PROFILES[args.profile]
    grid = CANVAS // sizes.patch_size
    args.output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator()
    set_seed(args.seed)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    init_clip = getattr(args, "init_clip", None)
    tower = CLIPVisionModel(vision_config(sizes, "gelu" if init_clip else "quick_gelu"))
    if init_clip:
        from selfcorrect.vision.clip import load_world_clip

        init_vision_from_open_clip(tower, load_world_clip(init_clip).model)
    probe = build_probe(sizes.vision_hidden)
    params = list(tower.parameters()) + list(probe.parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [t for t in params if t.ndim >= 2], "weight_decay": config.weight_decay},
            {"params": [t for t in params if t.ndim < 2], "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / config.warmup)
            * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps)))
        ),
    )
    tower, probe, optimizer, lr_schedule = accelerator.prepare(tower, probe, optimizer, lr_schedule)
    start = resume(accelerator, args.output_dir, STAGE)

    generated = load_pool(args.generated) if getattr(args, "generated", None) else None
    B, P, p = config.batch_size, accelerator.num_processes, accelerator.process_index
    data = DenseSet(10**9, args.seed, grid, generated)
    loader = torch.utils.data.DataLoader(
        data,
        # The n-th batch on process p: images [(n * P + p) * B, ...), so a resumed run sees the same.
        batch_sampler=[range((n * P + p) * B, (n * P + p + 1) * B) for n in range(start, config.steps)],
        num_workers=config.num_workers,
    )
    bar = tqdm(total=config.steps, initial=start, desc="vision", disable=args.no_progress)
    started, losses = time.perf_counter(), []
    deadline, done = deadline_of(args, started), start
    tower.train()
    for step, batch in enumerate(loader, start=start):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        loss, parts = dense_loss(probe(patch_tokens(tower, batch.pop("pixel_values"))), batch)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.2f}" for k, v in parts.items()})
        done = step + 1
        if checkpoint_if_due(
            accelerator, args.output_dir, STAGE, done, config.steps, args.checkpoint_every, deadline=deadline
        ):
            break
    bar.close()
    if done < config.steps:
        stopped_early(done, config.steps, args)
        return None
    seconds = time.perf_counter() - started

    out = args.output_dir / "tower"
    if accelerator.is_main_process:
        tower, probe = accelerator.unwrap_model(tower).eval(), accelerator.unwrap_model(probe).eval()
        held_out = DenseSet(config.eval_images, args.seed + EVAL_SEED_OFFSET, grid, generated)
        batches = torch.utils.data.DataLoader(held_out, batch_size=256)
        outputs, targets = [], []
        with torch.no_grad():
            for batch in batches:
                outputs.append(probe(patch_tokens(tower, batch.pop("pixel_values"))))
                targets.append(batch)
        record = {
            "profile": args.profile,
            "seed": args.seed,
            "config": dataclasses.asdict(config),
            "init_clip": str(init_clip) if init_clip else None,
            "generated_images": len(generated or []),
            "steps_this_run": config.steps - start,
            "seconds_this_run": round(seconds, 1),
            "loss_last_50": round(sum(losses[-50:]) / len(losses[-50:]), 4) if losses else None,
            "held_out": {
                "images": len(held_out),
                **probe_metrics(
                    torch.cat(outputs), {k: torch.cat([t[k] for t in targets]) for k in targets[0]}
                ),
            },
        }
        tmp = out.parent / f".tmp-{out.name}"
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
        tower.save_pretrained(tmp, safe_serialization=True)
        (tmp / "selfcorrect_training.json").write_text(json.dumps(record, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        logger.info("held-out probe: %s", record["held_out"])
        logger.info("saved %s", out)
    accelerator.wait_for_everyone()
    return out


def load_tower(folder: Path, config=None):
    """A tower saved by this script, checked against a VLM profile's sizes (``config``; None: unchecked).

    Raises:
        SelfcorrectError: no tower in ``folder``, or one of other sizes.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if not (Path(folder) / "config.json").is_file():
        raise SelfcorrectError(f"{folder} holds no vision tower (no config.json); train one with {__name__}")
    saved = CLIPVisionConfig.from_pretrained(folder)
    have = (saved.hidden_size, saved.num_hidden_layers, saved.patch_size, saved.image_size)
    wanted = (
        have if config is None else (config.vision_hidden, config.vision_layers, config.patch_size, CANVAS)
    )
    if have != wanted:
        raise SelfcorrectError(
            f"the tower in {folder} (width, layers, patch, image size {have}) does not fit the profile {wanted}"
        )
    return CLIPVisionModel.from_pretrained(folder)


if __name__ == "__main__":
    raise SystemExit(run_script(main, parse_args))
