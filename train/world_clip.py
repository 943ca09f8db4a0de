"""Train the embedded world's CLIP and save it as an ordinary open_clip model.

The model is an :class:`open_clip.CLIP` built from a small custom model config registered with
``open_clip.add_model_config`` (a ViT image tower for 64x64 images, a text transformer) and
open_clip's standard CLIP tokenizer. It learns contrastively from world scenes rendered on the fly:
half sampled for prompts of the train suite (so it sees the suites' wording), half free random
scenes captioned in a random style. Held-out colour-shape combinations never appear.

Additions to CLIP's loss, all because CLIP's weakness is binding attributes and relations:

* **hard negatives** (NegCLIP): each image also contrasts with captions one edit away from its
  own (:func:`selfcorrect.world.negatives.hard_negatives`: another colour, count, relation, or an
  attribute swapped between two objects). In-batch captions of other scenes almost never differ
  that little, so without them nothing teaches binding and the model stays a bag of words.
* **no false negatives**: a short prompt ("a photo of a circle") is often true of other images in
  the batch too; such pairs are left out of both softmaxes instead of being pushed apart.
* **text separation** (``text_separation`` > 0, the ``cpu`` and ``gpu`` profiles): a hinge that
  keeps each caption's text embedding apart from its hard negatives' (:func:`text_separation_loss`),
  so that the text tower tells word orders apart before the image tower has learned positions.

Prompt categories can be drawn unevenly (``category_weights``): the ``cpu`` and ``gpu`` profiles
draw position prompts 4x as often as most categories and attribute-binding prompts 2x (single
colours and negation, the easiest, half as often). ``--init-vision`` starts the image tower from a
densely pretrained tower (:mod:`selfcorrect.train.world_vision`), as the shipped model's first run did.
``--init-clip`` starts the whole model from a saved world CLIP instead (its config must be the
profile's), to train a finished model further on a fresh schedule (``--lr``, ``--warmup``).

Usage::

    python -m selfcorrect.train.world_clip --profile cpu --output-dir runs/world-clip \
        --init-vision runs/vision/tower
    accelerate launch -m selfcorrect.train.world_clip --profile gpu --output-dir runs/world-clip

The model lands in ``OUTPUT_DIR/model`` (fp16 safetensors and configs in open_clip's folder
layout, see :mod:`selfcorrect.vision.clip`, plus ``selfcorrect_training.json`` with the
validation result of :func:`evaluate_hard_negatives`); copy it to ``selfcorrect/weights/world-clip``
to ship it. Training can be killed at any time: checkpoints are written atomically every
``--checkpoint-every`` steps and a rerun with the same ``--output-dir`` resumes from the newest one.
Under ``accelerate launch`` every process builds its own batches and computes the loss on them
(a local loss: no feature gathering); gradients are averaged as usual.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from selfcorrect.errors import SelfcorrectError
from selfcorrect.train.world_t2i import (
    CANVAS,
    captioned_scene,
    checkpoint_if_due,
    deadline_of,
    resume,
    run_config,
    run_script,
    stopped_early,
    training_parser,
)

logger = logging.getLogger(__name__)

VOCAB_SIZE = 49408  # open_clip's SimpleTokenizer (the CLIP BPE): its ids run to 49407
STAGE = "clip"  # checkpoint folder prefix
TEXTURE_MAX = 0.15  # half the renders get background texture of amplitude drawn from [0, TEXTURE_MAX]


@dataclass
class ClipConfig:
    """Sizes and schedule of one training run. See :data:`PROFILES` for the named presets.

    > Model (an open_clip model config; see :func:`model_config`)
    embed_dim: width of the shared image-text embedding.
    vision_width / vision_layers / patch_size / head_width: the ViT image tower; 64x64 images in
      ``patch_size`` patches, ``vision_width // head_width`` heads.
    text_width / text_heads / text_layers / context_length: the text transformer. Its token
      embedding has a row per BPE token (49,408 x text_width), most of the shipped weights.

    > Schedule
    steps: optimiser steps; batch_size: images per step (per process).
    hard_negatives: hard-negative captions per image (0 turns them off).
    text_separation / text_margin: weight and margin of :func:`text_separation_loss` (weight 0
      turns it off).
    prompt_share: share of scenes sampled for train-suite prompts (the rest are random scenes).
    category_weights: how often each prompt category is drawn for those scenes, relative to the
      others (a category not named weighs 1).
    max_objects: objects in a random scene, at most (the suites ask for at most 4).
    eval_limit: validation prompts scored at the end, for the training record (None: all 350).
    """

    embed_dim: int = 128
    vision_width: int = 128
    vision_layers: int = 4
    patch_size: int = 8
    head_width: int = 32
    text_width: int = 48
    text_heads: int = 3
    text_layers: int = 3
    context_length: int = 32
    steps: int = 1800
    batch_size: int = 64
    hard_negatives: int = 4
    text_separation: float = 0.0
    text_margin: float = 0.8
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.1
    prompt_share: float = 0.5
    category_weights: dict = field(default_factory=dict)
    max_objects: int = 4
    texture_max: float = TEXTURE_MAX
    mixed_precision: str = "no"
    num_workers: int = 1
    eval_limit: int | None = None
    notes: dict = field(default_factory=dict)


# Prompt categories drawn more (binding, positions) or less (single attributes) than the others.
RELATION_HEAVY = {"position": 4.0, "color_attribution": 2.0, "colors": 0.5, "negation": 0.5}

PROFILES: dict[str, ClipConfig] = {
    # Seconds: for tests. Learns nothing useful.
    "tiny": ClipConfig(
        embed_dim=16,
        vision_width=32,
        vision_layers=1,
        patch_size=16,
        text_width=16,
        text_heads=1,
        text_layers=1,
        steps=3,
        batch_size=6,
        hard_negatives=2,
        warmup=1,
        num_workers=0,
        eval_limit=7,
    ),
    # 2 idle CPU cores, ~1 s a step; the shipped model, with --init-vision (a world_vision tower),
    # then 2400 more steps from that model (--init-clip, --lr 5e-4): see the model card.
    # Relations and binding are what CLIP learns last, so position prompts are drawn 4x as often
    # and attribute binding 2x, each image gets 8 hard negatives, and the text tower is taught to
    # tell a caption from its hard negatives (text_separation_loss).
    "cpu": ClipConfig(
        steps=3000,
        hard_negatives=8,
        text_separation=5.0,
        category_weights=RELATION_HEAVY,
    ),
    # One GPU (bf16 autocast): a deeper image tower, bigger batches, about 7x the steps. Same text
    # tower, so the shipped fp16 weights stay under 8 MB (the token embedding dominates).
    "gpu": ClipConfig(
        vision_layers=6,
        patch_size=4,
        steps=20000,
        batch_size=256,
        hard_negatives=8,
        text_separation=5.0,
        category_weights=RELATION_HEAVY,
        lr=5e-4,
        warmup=500,
        mixed_precision="bf16",
        num_workers=8,
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_parser(
        __doc__, PROFILES, "checkpoints go here; the model in OUTPUT_DIR/model", 250, time_limit=True
    )
    p.add_argument("--steps", type=int, default=None, help="override the profile's steps (to train longer)")
    p.add_argument(
        "--init-vision",
        type=Path,
        default=None,
        help="start the image tower from a tower saved by selfcorrect.train.world_vision (OUTPUT_DIR/tower)",
    )
    p.add_argument(
        "--init-clip",
        type=Path,
        default=None,
        help="start the whole model from a saved world CLIP folder (e.g. selfcorrect/weights/world-clip) "
        "of the profile's sizes, to train it further",
    )
    p.add_argument("--lr", type=float, default=None, help="override the profile's peak learning rate")
    p.add_argument("--warmup", type=int, default=None, help="override the profile's warm-up steps")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument(
        "--num-workers", type=int, default=None, help="data loader processes (default: the profile's)"
    )
    p.add_argument("--eval-limit", type=int, default=None, help="validation prompts scored at the end")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Model


def model_config(config: ClipConfig) -> dict:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) of ``config``."""
    return {
        "embed_dim": config.embed_dim,
        "vision_cfg": {
            "image_size": CANVAS,
            "layers": config.vision_layers,
            "width": config.vision_width,
            "head_width": config.head_width,
            "patch_size": config.patch_size,
        },
        "text_cfg": {
            "context_length": config.context_length,
            "vocab_size": VOCAB_SIZE,
            "width": config.text_width,
            "heads": config.text_heads,
            "layers": config.text_layers,
        },
    }


def contrastive_loss(
    image_features,
    text_features,
    logit_scale,
    negative_features=None,
    negative_mask=None,
    same=None,
):
    """CLIP's symmetric InfoNCE loss, with NegCLIP hard negatives and false negatives left out.

    Row ``i`` of the image and text features is a matching pair; every other text of the batch is
    a negative for image ``i`` (and every other image for text ``i``), except the pairs ``same``
    marks, and image ``i`` also competes against its own hard negatives (image -> text only:
    a hard negative has no image of its own).

    Args:
        image_features: ``(B, D)``, unit norm.
        text_features: ``(B, D)``, unit norm.
        logit_scale: scalar tensor, the inverse temperature (already ``exp``'d, as open_clip's
            models return it).
        negative_features: ``(B, K, D)`` unit-norm features of each image's hard negatives, or None.
        negative_mask: ``(B, K)`` bool, False where a hard negative is padding; None = all real.
        same: ``(B, B)`` bool, True where text ``j`` is also true of image ``i`` (``i != j``);
            those pairs count neither way. The diagonal is ignored.

    Returns:
        A scalar: ``(CE(image -> texts) + CE(text -> images)) / 2``. With no negatives and no
        ``same`` it equals ``open_clip.ClipLoss()(image_features, text_features, logit_scale)``.
    """
    import torch
    import torch.nn.functional as F

    b = image_features.shape[0]
    labels = torch.arange(b, device=image_features.device)
    logits = logit_scale * image_features @ text_features.T  # (B, B): image i x text j
    if same is not None:
        same = same & ~torch.eye(b, dtype=torch.bool, device=same.device)
        logits = logits.masked_fill(same, float("-inf"))
    text_to_image = F.cross_entropy(logits.T, labels)
    if negative_features is not None and negative_features.shape[1] > 0:
        hard = logit_scale * torch.einsum("bd,bkd->bk", image_features, negative_features)  # (B, K)
        if negative_mask is not None:
            hard = hard.masked_fill(~negative_mask, float("-inf"))
        logits = torch.cat([logits, hard], dim=1)  # (B, B + K)
    image_to_text = F.cross_entropy(logits, labels)
    return (image_to_text + text_to_image) / 2


def text_separation_loss(text_features, negative_features, negative_mask=None, margin: float = 0.8):
    """Hinge on how alike each caption and its own hard negatives are embedded, in the text tower alone.

    A hard negative is false of the caption's image, so the two texts must not embed alike. The
    contrastive loss only says so through the image, and a text tower that does not yet tell
    "a circle left of a square" from "a square left of a circle" gets no useful gradient from an
    image tower that does not yet see positions either (and vice versa): measured on the shipped
    world CLIP, such pairs had cosine 0.99 while a colour change had 0.63. This term separates the
    texts first, so the image-text loss has something to align to.

    Args:
        text_features: ``(B, D)`` unit-norm caption features.
        negative_features: ``(B, K, D)`` unit-norm features of each caption's hard negatives.
        negative_mask: ``(B, K)`` bool, False where a hard negative is padding; None = all real.
        margin: cosines at or below this cost nothing.

    Returns:
        A scalar: ``relu(cos(caption_i, negative_ik) - margin)`` summed over ``k``, averaged over ``i``.
    """
    import torch

    cos = torch.einsum("bd,bkd->bk", text_features, negative_features)  # (B, K)
    excess = torch.relu(cos - margin)
    if negative_mask is not None:
        excess = excess * negative_mask
    return excess.sum(dim=1).mean()


# ---------------------------------------------------------------------------------------------
# Data


class ClipBatches:
    """Map-style dataset whose item ``s`` is one whole batch, a pure function of ``(seed, s)``.

    Whole batches, not single examples, because the false-negative mask compares every caption
    with every scene of the batch; built in loader workers, it overlaps with the training step.

    Each item is a dict of tensors:

    * ``images``: ``(B, 3, 64, 64)`` float, through the model's eval preprocess. No augmentation:
      open_clip's random resized crop would change sizes and positions, which captions state.
    * ``texts``: ``(B, L)`` long token ids of each scene's caption.
    * ``negatives``: ``(B, K, L)`` long, each scene's hard negatives ("" where fewer were found).
    * ``negative_mask``: ``(B, K)`` bool, False for padding.
    * ``same``: ``(B, B)`` bool, True where caption ``j`` is also true of scene ``i`` (``i != j``).
    """

    def __init__(self, config: ClipConfig, seed: int, preprocess, tokenizer, length: int = 10**9):
        from selfcorrect.world.requirements import CATEGORIES
        from selfcorrect.world.suites import load_suite

        self.config, self.seed, self.length = config, seed, length
        self.preprocess, self.tokenizer = preprocess, tokenizer
        # Prompts by category, so each category is drawn as often as its weight says (the train
        # suite holds 132 position prompts but 500 colour ones, and position is the hardest to learn).
        unknown = set(config.category_weights) - set(CATEGORIES)
        if unknown:
            raise SelfcorrectError(
                f"unknown prompt categories {sorted(unknown)}; known: {', '.join(CATEGORIES)}"
            )
        self.prompts = [ps for c in CATEGORIES if (ps := load_suite("train", c))]
        self.weights = [config.category_weights.get(ps[0].category, 1.0) for ps in self.prompts]

    def __len__(self) -> int:
        return self.length

    def example(self, rng: random.Random):
        """One ``(scene, caption)``; no held-out combination in either (see :func:`captioned_scene`)."""
        c = self.config
        texture = rng.uniform(0.0, c.texture_max) if rng.random() < 0.5 else 0.0
        return captioned_scene(
            rng,
            lambda r: r.choice(r.choices(self.prompts, self.weights)[0]),
            prompt_share=c.prompt_share,
            max_objects=c.max_objects,
            texture=texture,
        )

    def __getitem__(self, index: int) -> dict:
        import torch

        from selfcorrect.world.negatives import hard_negatives
        from selfcorrect.world.render import render

        c = self.config
        scenes, texts, negatives = [], [], []
        for i in range(c.batch_size):
            rng = random.Random(f"{self.seed}:{index}:{i}")  # str seeds hash with sha512: stable
            scene, text = self.example(rng)
            negs = [h.text for h in hard_negatives(scene, text, n=c.hard_negatives, rng=rng)]
            scenes.append(scene)
            texts.append(text)
            negatives.append(negs + [""] * (c.hard_negatives - len(negs)))
        images = torch.stack([self.preprocess(render(s, CANVAS)) for s in scenes])
        flat = [t for negs in negatives for t in negs]
        ids = self.tokenizer(texts + flat)  # (B + B*K, L)
        b, k = c.batch_size, c.hard_negatives
        return {
            "images": images,
            "texts": ids[:b],
            "negatives": ids[b:].view(b, k, -1),
            "negative_mask": torch.tensor([[t != "" for t in negs] for negs in negatives]).view(b, k),
            "same": same_mask(scenes, texts),
        }


def same_mask(scenes, texts):
    """``(B, B)`` bool: True where ``texts[j]`` is true of ``scenes[i]`` and ``i != j``."""
    import torch

    from selfcorrect.world.grammar import parse_prompt
    from selfcorrect.world.requirements import evaluate

    requirements = [parse_prompt(t) for t in texts]
    # A caption can only hold if every shape it says is there is there: a cheap test that skips
    # most of the B*B evaluations.
    needs = [{r.query.shape for r in req.objects if r.count > 0} for req in requirements]
    shapes = [{o.shape for o in s.objects} for s in scenes]
    mask = torch.zeros(len(scenes), len(texts), dtype=torch.bool)
    for i, scene in enumerate(scenes):
        for j, req in enumerate(requirements):
            if i != j and needs[j] <= shapes[i]:
                mask[i, j] = all(r.passed for r in evaluate(scene.objects, req))
    return mask


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate_hard_negatives(
    model, preprocess, tokenizer, split: str = "test", limit: int | None = None, seed: int = 0, n: int = 10
) -> dict:
    """Image -> its true caption among ``n`` hard negatives, over scenes of a prompt suite.

    For each prompt of ``load_suite(split)`` one scene is sampled and rendered (half of them with
    mild background texture); its caption is the prompt, its negatives come from
    :func:`~selfcorrect.world.negatives.hard_negatives`. A scene counts as right when the prompt
    scores strictly higher than every negative. Deterministic for ``(split, seed)``; a ``limit``
    picks a seeded subset of the same scenes.

    Args:
        model, preprocess, tokenizer: an open_clip model, its eval transform and tokenizer.
        split: a suite split (``train``, ``val``, ``test``, ``heldout``).
        limit: score only this many prompts (a seeded sample across categories); None for all.
        seed: seeds the scenes, the negatives and the sample.
        n: hard negatives per scene (fewer where the caption allows fewer).

    Returns:
        ``{"split", "scenes", "negatives_per_scene", "accuracy", "by_kind", "by_category",
        "pairwise_by_kind", "text_cosine_by_kind"}``: ``accuracy`` over all scenes; ``by_kind[k]``
        = share of scenes whose caption beats all their negatives of kind ``k`` (among scenes that
        have one); ``pairwise_by_kind[k]`` = share of (caption, negative of kind k) pairs won;
        ``text_cosine_by_kind[k]`` = mean cosine of a caption's text embedding with its negatives'
        of kind k (near 1: the text tower cannot tell them apart, whatever the image shows).
    """
    import torch

    from selfcorrect.vision.clip import encode_images, encode_texts
    from selfcorrect.world.negatives import NEGATIVE_KINDS, hard_negatives
    from selfcorrect.world.render import render
    from selfcorrect.world.sampling import sample_scene
    from selfcorrect.world.suites import load_suite

    prompts = load_suite(split)
    chosen = range(len(prompts))
    if limit is not None and limit < len(prompts):
        chosen = sorted(random.Random(f"sample:{seed}").sample(range(len(prompts)), limit))
    items = []
    for k in chosen:
        rng = random.Random(f"clip-eval:{split}:{seed}:{k}")
        texture = rng.uniform(0.0, TEXTURE_MAX) if rng.random() < 0.5 else 0.0
        scene = sample_scene(prompts[k].requirements, rng.randrange(2**31), texture=texture)
        items.append((prompts[k], scene, hard_negatives(scene, prompts[k].prompt, n=n, rng=rng)))
    if not items:
        raise ValueError(f"the {split!r} split has no prompts")

    was_training = model.training
    model.eval()
    images = torch.stack([preprocess(render(scene, CANVAS)) for _, scene, _ in items])
    image_features = encode_images(model, preprocess, images)  # (S, D)
    texts = [t for p, _, negs in items for t in [p.prompt, *(h.text for h in negs)]]
    text_features = encode_texts(model, tokenizer, texts)  # (sum of 1 + negatives, D)
    model.train(was_training)

    right, kind_right, kind_total, pair_right, pair_total = 0, {}, {}, {}, {}
    category_right, category_total, text_cos = {}, {}, {}
    start = 0
    for (prompt, _, negs), feature in zip(items, image_features):
        texts_here = text_features[start : start + 1 + len(negs)]  # (1 + negatives, D)
        sims = texts_here @ feature  # (1 + negatives,)
        start += 1 + len(negs)
        won = sims[0] > sims[1:]  # (negatives,) bool
        for h, cos in zip(negs, (texts_here[1:] @ texts_here[0]).tolist()):
            text_cos.setdefault(h.kind, []).append(cos)
        ok = bool(won.all())
        right += ok
        category_total[prompt.category] = category_total.get(prompt.category, 0) + 1
        category_right[prompt.category] = category_right.get(prompt.category, 0) + ok
        for kind in NEGATIVE_KINDS:
            mine = [w for w, h in zip(won.tolist(), negs) if h.kind == kind]
            if mine:
                kind_total[kind] = kind_total.get(kind, 0) + 1
                kind_right[kind] = kind_right.get(kind, 0) + all(mine)
                pair_total[kind] = pair_total.get(kind, 0) + len(mine)
                pair_right[kind] = pair_right.get(kind, 0) + sum(mine)
    return {
        "split": split,
        "scenes": len(items),
        "negatives_per_scene": round(sum(len(negs) for *_, negs in items) / len(items), 2),
        "accuracy": right / len(items),
        "by_kind": {k: kind_right[k] / kind_total[k] for k in NEGATIVE_KINDS if k in kind_total},
        "by_category": {c: category_right[c] / category_total[c] for c in category_total},
        "pairwise_by_kind": {k: pair_right[k] / pair_total[k] for k in NEGATIVE_KINDS if k in pair_total},
        "text_cosine_by_kind": {k: sum(v) / len(v) for k, v in text_cos.items()},
    }


# ---------------------------------------------------------------------------------------------
# Training


def main(args: argparse.Namespace) -> Path | None:
    """Run (or resume) training, evaluate on the val split and save the model; returns its folder
    (None when ``--time-limit`` stopped it first: a checkpoint is saved and a rerun resumes)."""
    import open_clip
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    config = run_config(PROFILES, args.profile)  # this run writes into its notes
    for name in ("steps", "batch_size", "num_workers", "eval_limit", "lr", "warmup"):
        if getattr(args, name, None) is not None:
            setattr(config, name, getattr(args, name))
    init_clip, init_vision = getattr(args, "init_clip", None), getattr(args, "init_vision", None)
    if init_clip is not None and init_vision is not None:
        raise SelfcorrectError("give --init-clip or --init-vision, not both")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    set_seed(args.seed)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    cfg = model_config(config)
    name = _register(accelerator, args.output_dir, cfg)
    model, _, preprocess = open_clip.create_model_and_transforms(name)  # random init, fp32
    tokenizer = open_clip.get_tokenizer(name)
    # A resumed run loads its checkpoint over either initialisation.
    if init_vision is not None:
        init_visual_from_tower(model, init_vision)
        config.notes["init_vision"] = str(init_vision)
    if init_clip is not None:
        init_from_clip(model, cfg, init_clip)
        config.notes["init_clip"] = str(init_clip)

    # AdamW as open_clip trains: no weight decay on gains, biases and the temperature.
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "ln" in n or "logit_scale" in n]
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or "ln" in n or "logit_scale" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,  # linear warm-up, then cosine decay to a tenth
        lambda s: (
            min(1.0, (s + 1) / config.warmup)
            * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps)))
        ),
    )
    model, optimizer, lr_schedule = accelerator.prepare(model, optimizer, lr_schedule)
    start = resume(accelerator, args.output_dir, STAGE)

    # Each process draws its own batches: batch s of process p is dataset item s * P + p, so a
    # resumed run sees exactly the batches it would have seen.
    P, p = accelerator.num_processes, accelerator.process_index
    data = ClipBatches(config, args.seed, preprocess, tokenizer)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=None,  # items are whole batches
        sampler=range(start * P + p, config.steps * P, P),
        num_workers=config.num_workers,
    )
    bar = tqdm(
        total=config.steps,
        initial=start,
        desc="clip",
        disable=args.no_progress or not accelerator.is_main_process,
    )
    started = time.perf_counter()
    deadline, done = deadline_of(args, started), start
    losses: list[float] = []
    model.train()
    for step, batch in enumerate(loader, start=start):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        b, k, length = batch["negatives"].shape
        text_ids = torch.cat([batch["texts"], batch["negatives"].view(b * k, length)])  # (B + B*K, L)
        with accelerator.autocast():
            # Through forward(), so DDP syncs gradients; it returns unit-norm features.
            image_features, text_features, logit_scale = model(batch["images"], text_ids)
        text_features = text_features.float()
        negatives = text_features[b:].view(b, k, -1)
        loss = contrastive_loss(
            image_features.float(),
            text_features[:b],
            logit_scale.float(),
            negatives,
            batch["negative_mask"],
            batch["same"],
        )
        if config.text_separation and k:
            separation = text_separation_loss(
                text_features[:b], negatives, batch["negative_mask"], config.text_margin
            )
            loss = loss + config.text_separation * separation
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # CLIP caps the inverse temperature at 100
            accelerator.unwrap_model(model).logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{logit_scale.item():.1f}")
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

    out = args.output_dir / "model"
    if accelerator.is_main_process:
        from selfcorrect.vision.clip import save_world_clip

        model = accelerator.unwrap_model(model).float().eval()
        result = evaluate_hard_negatives(model, preprocess, tokenizer, "val", config.eval_limit, args.seed)
        logger.info("val: %.3f of scenes pick their caption over 10 hard negatives", result["accuracy"])
        params = sum(t.numel() for t in model.parameters())
        record = {
            "profile": args.profile,
            "seed": args.seed,
            "config": dataclasses.asdict(config),
            "model_cfg": cfg,
            "parameters": params,
            "steps_this_run": config.steps - start,
            # Wall time of this invocation only: a resumed run does not know how long earlier ones took.
            "seconds_this_run": round(seconds, 1),
            "seconds_per_step": round(seconds / max(1, config.steps - start), 3),
            "loss_last_50": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4) if losses else None,
            "val": result,
            "device": str(accelerator.device),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
        }
        save_world_clip(model, cfg, out, record)
        logger.info("saved %s", out)
    accelerator.wait_for_everyone()
    return out


def init_from_clip(clip, cfg: dict, folder: Path) -> None:
    """Load a saved world CLIP's weights (fp16 on disk, fp32 here) into ``clip``, in place.

    Raises:
        SelfcorrectError: the saved model's config is not ``cfg`` (other sizes would fail to
            load anyway; this says which profile to use instead).
    """
    from selfcorrect.vision.clip import HUB_CONFIG, load_world_clip

    folder = Path(folder)
    loaded = load_world_clip(folder)  # clear errors for a missing or unreadable folder
    saved = json.loads((folder / HUB_CONFIG).read_text())["model_cfg"]
    if saved != cfg:
        raise SelfcorrectError(
            f"{folder} holds a CLIP of another config than this profile's; differing: "
            + ", ".join(k for k in sorted(set(saved) | set(cfg)) if saved.get(k) != cfg.get(k))
        )
    clip.load_state_dict(loaded.model.state_dict())


def init_visual_from_tower(clip, folder: Path) -> None:
    """Start an open_clip CLIP's image tower from a transformers CLIP vision tower, in place.

    The inverse of :func:`selfcorrect.train.world_vlm.init_vision_from_open_clip`, for a tower
    saved by :mod:`selfcorrect.train.world_vision` (densely pretrained: each patch token already
    tells what covers it and where its object's centre is). The output projection ``proj`` keeps
    its own initialisation.

    Raises:
        SelfcorrectError: no tower in ``folder``, or one of other sizes or activation.
    """
    import torch

    from selfcorrect.train.world_vision import load_tower
    from selfcorrect.train.world_vlm import check_towers_fit, tower_name_pairs

    tower = load_tower(folder)  # sizes are checked against the CLIP below, not a VLM profile
    tower = getattr(tower, "vision_model", tower)  # transformers 5 dropped the wrapper
    visual = clip.visual
    check_towers_fit(visual, tower, tower.config)
    source = tower.state_dict()
    blocks = len(visual.transformer.resblocks)
    target = {theirs: source[ours] for ours, theirs in tower_name_pairs(blocks)}
    for i in range(blocks):
        a, b = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            parts = [source[f"{b}self_attn.{name}_proj.{kind}"] for name in "qkv"]
            target[f"{a}attn.in_proj_{kind}"] = torch.cat(parts)
    with torch.no_grad():
        missing, unexpected = visual.load_state_dict(target, strict=False)
    if set(missing) != {"proj"} or unexpected:
        raise SelfcorrectError(f"vision tower -> open_clip mapping is incomplete: {missing or unexpected}")


def _register(accelerator, output_dir: Path, cfg: dict) -> str:
    """Register the model config with open_clip from ``OUTPUT_DIR/world-clip.json``.

    A resumed run must build the architecture its checkpoints hold: a different saved config is
    an error rather than a silent mismatch at load time.
    """
    import open_clip

    from selfcorrect.vision.clip import WORLD_CLIP_NAME

    path = output_dir / f"{WORLD_CLIP_NAME}.json"
    if path.exists() and json.loads(path.read_text()) != cfg:
        raise SelfcorrectError(
            f"{output_dir} holds a run of another model config ({path}); use a new --output-dir, or the "
            "profile it was trained with"
        )
    if accelerator.is_main_process:
        path.write_text(json.dumps(cfg, indent=2))
    accelerator.wait_for_everyone()
    open_clip.add_model_config(path)
    return path.stem


if __name__ == "__main__":
    raise SystemExit(run_script(main, parse_args))
