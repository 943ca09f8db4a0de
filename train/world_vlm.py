"""Train the embedded world's VLM and save it as an ordinary transformers LLaVA checkpoint.

The result is a :class:`transformers.LlavaForConditionalGeneration` (a CLIP vision tower for
64x64 images, trained from scratch or started with ``--init-vision`` from the world CLIP's image
tower or from a tower pretrained on dense world labels by :mod:`selfcorrect.train.world_vision`;
LLaVA's two-layer MLP projector, a small Llama language model) with
a :class:`transformers.LlavaProcessor` (a CLIP image processor, a byte-level BPE tokenizer trained
here on the training conversations, a LLaVA-1.5 chat template). Plain
``AutoModelForImageTextToText.from_pretrained(path)`` and ``AutoProcessor.from_pretrained(path)``
load and run it with no selfcorrect code; :meth:`selfcorrect.vision.vlm.VLM.from_pretrained` chats
and scores with it as with any LLaVA.

It learns every task the critics ask of it, from the seeded conversations of
:class:`selfcorrect.world.conversations.ConversationSet` (rendered and degraded scenes, optionally
images of the world text-to-image model labelled by the oracle): the loss is the cross-entropy of
the assistant's tokens only (every answer of a multi-turn conversation, and its ``</s>``).

**The template and the tokenizer agree with scoring.** The generation prompt ends with
``ASSISTANT:`` and an answer is rendered as `` answer</s>``. The tokenizer adds a space before
text that does not start with one (byte-level BPE with ``add_prefix_space``), so ``"Yes"``
tokenized on its own, as :meth:`VLM.score` tokenizes continuations, gives the very token
(``ĠYes``) the model was trained to produce after ``ASSISTANT:``.

**Vision features from the last layer** (``vision_feature_layer=-1``), not LLaVA's penultimate
one: LLaVA skips the last layer of a CLIP trained for its contrastive objective, but this tower is
trained by the language-model loss (and the dense pretraining trains exactly that layer's patch
tokens), so its last layer is the one that learns what the language model needs (with -2 it would
be computed and never trained).

Usage::

    python -m selfcorrect.train.world_vlm --profile cpu --output-dir runs/world-vlm
    accelerate launch -m selfcorrect.train.world_vlm --profile gpu --output-dir runs/world-vlm
    # continue a saved model (same profile sizes), reweighting tasks:
    python -m selfcorrect.train.world_vlm --profile cpu --output-dir runs/more \
        --init-model selfcorrect/weights/world-vlm --mix vqa=0.45,ground=0.15 --lr 5e-4
    # ... with a vision tower pretrained on dense labels (selfcorrect.train.world_vision):
    python -m selfcorrect.train.world_vlm --profile cpu --output-dir runs/reads \
        --init-model selfcorrect/weights/world-vlm --init-vision runs/world-vision/tower

The model lands in ``OUTPUT_DIR/model`` (fp16 safetensors, config, processor files and
``selfcorrect_training.json`` with a quick validation); copy it to ``selfcorrect/weights/world-vlm``
to ship it. Training can be killed at any time: checkpoints are written atomically every
``--checkpoint-every`` steps and a rerun with the same ``--output-dir`` resumes from the newest one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from selfcorrect.errors import SelfcorrectError
from selfcorrect.train.generated_pool import load_pool
from selfcorrect.train.world_t2i import (
    CANVAS,
    checkpoint_if_due,
    deadline_of,
    non_negative,
    resume,
    run_config,
    run_script,
    stopped_early,
    training_parser,
)

logger = logging.getLogger(__name__)

STAGE = "vlm"  # checkpoint folder prefix
IGNORE = -100  # label of tokens without loss (cross_entropy's ignore_index)
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
# Words the critics score as one-token continuations; the tokenizer's corpus always holds them.
SINGLE_TOKEN_WORDS = ("Yes", "No", "yes", "no", *(str(n) for n in range(101)))
EVAL_SEED_OFFSET = 1_000_003  # the validation conversations' seed, away from the training seed

# LLaVA-1.5's conversation format: "USER: <image>\n... ASSISTANT: answer</s>USER: ... ASSISTANT:".
# Images go first in their user turn (each "<image>\n"), then its text parts. The assistant's text
# sits in a {% generation %} block, so that apply_chat_template(return_assistant_tokens_mask=True)
# marks the tokens the loss is computed on. System messages, if any, are plain text before USER.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}"
    "{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'assistant' %}ASSISTANT:{% generation %}"
    "{% for part in parts %}{% if part['type'] == 'text' %} {{ part['text'] }}{% endif %}{% endfor %}"
    "</s>{% endgeneration %}"
    "{% elif message['role'] == 'system' %}"
    "{% for part in parts %}{% if part['type'] == 'text' %}{{ part['text'] }} {% endif %}{% endfor %}"
    "{% else %}USER: "
    "{% for part in parts %}{% if part['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for part in parts %}{% if part['type'] == 'text' %}{{ part['text'] }} {% endif %}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass
class VLMConfig:
    """Sizes and schedule of one training run. See :data:`PROFILES` for the named presets.

    > Model
    vision_hidden / vision_layers / vision_heads / patch_size: the CLIP vision tower; 64x64 images
      in ``patch_size`` patches give ``(64 / patch_size) ** 2`` image tokens.
    text_hidden / text_layers / text_heads / text_intermediate: the Llama language model (SwiGLU
      MLP of width ``text_intermediate``); its token embedding is tied to the output layer.
    vocab_size: the most tokens the BPE tokenizer may learn (it stops early when every word of its
      corpus is one token).
    max_positions: the language model's context (rotary: it costs no parameters).

    > Schedule
    steps: optimiser steps; batch_size: conversations per step (per process).
    lr / warmup / weight_decay: AdamW with linear warm-up, then cosine decay to a tenth.
    tokenizer_corpus: training conversations whose rendered text trains the tokenizer (and whose
      token lengths define the length buckets).
    length_buckets: tasks are grouped into this many buckets of similar conversation length and
      each batch is drawn from one bucket, so that it holds little padding (see :func:`batch_plan`).
      1 mixes all tasks in every batch.
    eval_turns: held-out assistant turns answered greedily at the end, for the training record.
    vision_lr_scale: a pretrained vision tower's learning rate relative to ``lr`` (``--init-vision``
      or ``--init-model``); 0 freezes it, as LLaVA does. Measured: a densely pretrained tower
      (:mod:`selfcorrect.train.world_vision`) trained on at 0.3 for 2100 steps lost what the
      language model most needed, shape (a linear readout of its patch tokens fell from 0.96 to
      0.71), while frozen it let shape answers on val rise from 0.40 to 0.62 in 900 steps
      (``selfcorrect/weights/world-vlm/README.md``).
    """

    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    patch_size: int = 8
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 704
    vocab_size: int = 1280
    max_positions: int = 2048
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.1
    mixed_precision: str = "no"
    num_workers: int = 1
    tokenizer_corpus: int = 5000
    length_buckets: int = 3
    eval_turns: int = 100
    vision_lr_scale: float = 0.0
    notes: dict = field(default_factory=dict)


PROFILES: dict[str, VLMConfig] = {
    # Seconds: for tests. Learns nothing useful.
    "tiny": VLMConfig(
        vision_hidden=32,
        vision_layers=1,
        vision_heads=2,
        patch_size=16,
        text_hidden=32,
        text_layers=1,
        text_heads=2,
        text_intermediate=64,
        vocab_size=1024,
        max_positions=1024,
        steps=3,
        batch_size=4,
        warmup=1,
        num_workers=0,
        tokenizer_corpus=60,
        length_buckets=2,
        eval_turns=4,
    ),
    # About 45 minutes on 2 idle CPU cores: 3.0 s per step at batch 32 (4.4M parameters, ~150
    # tokens a conversation with length buckets; the loader worker builds the conversations).
    # The shipped weights come from this profile and are far from trained: perception (colour,
    # shape, boxes) needs many more steps (--steps) or the gpu profile.
    "cpu": VLMConfig(batch_size=32, steps=800, warmup=50, tokenizer_corpus=1500),
    # One GPU (bf16 autocast): wider, deeper, bigger batches and 20x the steps.
    "gpu": VLMConfig(
        vision_hidden=256,
        vision_layers=6,
        vision_heads=4,
        text_hidden=512,
        text_layers=8,
        text_heads=8,
        text_intermediate=1408,
        vocab_size=2048,
        steps=20000,
        batch_size=128,
        lr=5e-4,
        warmup=500,
        mixed_precision="bf16",
        num_workers=8,
        tokenizer_corpus=20000,
        eval_turns=500,
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_parser(
        __doc__, PROFILES, "checkpoints go here; the model in OUTPUT_DIR/model", 250, time_limit=True
    )
    p.add_argument("--steps", type=int, default=None, help="override the profile's steps (to train longer)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument(
        "--num-workers", type=int, default=None, help="data loader processes (default: the profile's)"
    )
    p.add_argument(
        "--generated",
        type=Path,
        default=None,
        help="labelled images of the world text-to-image model (made by python -m selfcorrect.train.generated_pool)",
    )
    p.add_argument(
        "--init-vision",
        type=Path,
        default=None,
        help="start the vision tower from this folder: an open_clip model (e.g. selfcorrect/weights/world-clip) "
        "or a tower pretrained by python -m selfcorrect.train.world_vision; its sizes must match the "
        "profile's. With --init-model it replaces that model's tower and the projector starts anew",
    )
    p.add_argument(
        "--init-model",
        type=Path,
        default=None,
        help="continue training a saved world VLM (e.g. selfcorrect/weights/world-vlm): its weights, "
        "tokenizer and processor; the profile's sizes must match it",
    )
    p.add_argument(
        "--mix",
        type=parse_mix,
        default=None,
        help="task weights replacing the default mix for the named tasks, e.g. vqa=0.4,ground=0.2 "
        "(tasks not named keep their default weight)",
    )
    p.add_argument("--lr", type=float, default=None, help="override the profile's peak learning rate")
    p.add_argument(
        "--vision-lr-scale",
        type=non_negative,
        default=None,
        help="a pretrained vision tower's learning rate relative to --lr (default: the profile's); "
        "0 freezes it, as LLaVA does",
    )
    p.add_argument("--eval-turns", type=int, default=None, help="held-out answers checked at the end")
    return p.parse_args(argv)


def parse_mix(text: str) -> dict[str, float]:
    """``"vqa=0.4,ground=0.2"`` -> the default :data:`~selfcorrect.world.conversations.MIX` with
    those weights replaced (a weight of 0 drops the task)."""
    from selfcorrect.world.conversations import MIX

    mix = dict(MIX)
    for part in filter(None, (p.strip() for p in text.split(","))):
        task, _, value = part.partition("=")
        if task not in MIX:
            raise argparse.ArgumentTypeError(f"unknown task {task!r}; the tasks are {', '.join(MIX)}")
        try:
            mix[task] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: the weight must be a number (task=weight)") from None
        if mix[task] < 0:
            raise argparse.ArgumentTypeError(f"{part!r}: the weight must not be negative")
    if not any(mix.values()):
        raise argparse.ArgumentTypeError("the mix gives every task a weight of 0")
    return mix


# ---------------------------------------------------------------------------------------------
# Data


def conversation_set(size: int, seed: int, generated: list | None = None, mix: dict | None = None):
    """The training conversations: ``ConversationSet(size, seed, generated, mix=mix)``."""
    from selfcorrect.world.conversations import ConversationSet

    return ConversationSet(size, seed=seed, generated=generated, mix=mix)


def corpus_text(examples) -> list[str]:
    """The text a tokenizer learns from: each conversation through the chat template.

    Special tokens (``<image>``, ``</s>``) are left out: they are whole tokens, never merged.
    :data:`SINGLE_TOKEN_WORDS` are added (in proportion to the corpus), so that each becomes one
    token even if the conversations hold few of them.
    """
    texts = []
    for example in examples:
        text = render_chat(example.messages)
        for token in SPECIAL_TOKENS:
            text = text.replace(token, " ")
        texts.append(text)
    line = " ".join(SINGLE_TOKEN_WORDS)
    return texts + [line] * max(10, len(texts) // 20)


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE :class:`transformers.PreTrainedTokenizerFast` learned from ``texts``.

    Byte-level, so any text tokenizes (no unknown tokens); a space is added before text that
    does not start with one, so a word has the same token at the start of a string as after a
    space (see the module docstring). Encodings start with ``<s>``, as Llama's do.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def image_processor():
    """CLIP's preprocessing for 64x64 images (CLIP's mean and std; other sizes resized and cropped)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": CANVAS}, crop_size={"height": CANVAS, "width": CANVAS})


def build_processor(config: VLMConfig, tokenizer):
    """The :class:`transformers.LlavaProcessor`: 64x64 CLIP preprocessing, ``tokenizer``, the template.

    A 64x64 image passes through unchanged but for the normalisation (resizing its shortest edge
    to 64 and centre-cropping 64x64 are no-ops); other sizes are resized and cropped to 64x64.
    """
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=image_processor(),
        tokenizer=tokenizer,
        patch_size=config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )


def render_chat(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """One conversation through :data:`CHAT_TEMPLATE`, as ``processor.apply_chat_template`` renders it."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages], chat_template=CHAT_TEMPLATE, add_generation_prompt=add_generation_prompt
    )
    return rendered[0]


def length_buckets(examples, tokenizer, image_tokens: int, n: int) -> dict:
    """Group tasks into ``n`` buckets of similar conversation length.

    Conversations of one task have similar lengths (a yes/no question is ~100 tokens, a critique
    of a reasoning chain ~250); a batch mixing them is padded to its longest, and on a CPU the
    padding costs as much as real tokens. Tasks are sorted by their mean length in tokens (image
    tokens included) and cut into ``n`` groups of consecutive tasks.

    Args:
        examples: a sample of the training conversations (the tokenizer's corpus).
        tokenizer: the trained tokenizer.
        image_tokens: tokens per image.
        n: the number of buckets (at most the number of tasks).

    Returns:
        ``{"buckets": [[task, ...], ...], "weights": [share of the sample, ...],
        "shares": {task: share of the sample}, "mean_tokens": {task: mean length}}``, JSON-ready.
    """
    lengths: dict[str, list[int]] = {}
    for example in examples:
        ids = tokenizer(render_chat(example.messages)).input_ids
        lengths.setdefault(example.task, []).append(len(ids) + len(example.images) * (image_tokens - 1))
    mean = {t: sum(v) / len(v) for t, v in lengths.items()}
    tasks = sorted(mean, key=lambda t: (mean[t], t))
    n = max(1, min(n, len(tasks)))
    buckets = [tasks[len(tasks) * k // n : len(tasks) * (k + 1) // n] for k in range(n)]
    total = sum(len(v) for v in lengths.values())
    return {
        "buckets": buckets,
        "weights": [sum(len(lengths[t]) for t in b) / total for b in buckets],
        "shares": {t: len(lengths[t]) / total for t in tasks},
        "mean_tokens": {t: round(mean[t], 1) for t in tasks},
    }


def batch_plan(steps: int, weights: list[float], seed: int) -> list[tuple[int, int]]:
    """Which bucket each step draws from, and how many earlier steps drew from it.

    Returns:
        ``steps`` pairs ``(bucket, n)``: step ``s`` takes the ``n``-th batch of its bucket. A pure
        function of ``(steps, weights, seed)``, so a resumed run continues the same plan.
    """
    rng = random.Random(f"plan:{seed}")
    drawn = [0] * len(weights)
    plan = []
    for _ in range(steps):
        bucket = rng.choices(range(len(weights)), weights)[0] if len(weights) > 1 else 0
        plan.append((bucket, drawn[bucket]))
        drawn[bucket] += 1
    return plan


class Collator:
    """Turns a list of :class:`~selfcorrect.world.conversations.Example` into model inputs.

    Through the processor's own ``apply_chat_template``: the template renders each conversation,
    the processor expands each ``<image>`` into ``(64 / patch_size) ** 2`` image tokens and
    preprocesses the images, and the template's generation blocks mark the assistant tokens.

    Returns a dict:

    * ``input_ids``, ``attention_mask``: ``(B, T)`` long, right-padded with ``<pad>``.
    * ``pixel_values``: ``(N, 3, 64, 64)`` float, the N images of the batch in order.
    * ``labels``: ``(B, T)`` long: the token id where the assistant speaks (its answers and each
      answer's ``</s>``), :data:`IGNORE` elsewhere.
    * ``tasks``: list of B task names (not a tensor).
    """

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, examples) -> dict:
        batch = self.processor.apply_chat_template(
            [e.messages for e in examples],
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            return_tensors="pt",
            processor_kwargs={
                "images": [list(e.images) for e in examples],
                "padding": True,
                "padding_side": "right",
            },
        )
        labels = batch["input_ids"].masked_fill(batch["assistant_masks"] == 0, IGNORE)
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "pixel_values": batch["pixel_values"],
            "labels": labels,
            "tasks": [e.task for e in examples],
        }


# ---------------------------------------------------------------------------------------------
# Model


def vision_config(config: VLMConfig, vision_act: str = "quick_gelu"):
    """The :class:`transformers.CLIPVisionConfig` of the VLM's vision tower (64x64 images)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=config.vision_hidden,
        intermediate_size=4 * config.vision_hidden,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads,
        image_size=CANVAS,
        patch_size=config.patch_size,
        hidden_act=vision_act,
    )


def build_model(config: VLMConfig, tokenizer, vision_act: str = "quick_gelu"):
    """A randomly initialised :class:`transformers.LlavaForConditionalGeneration` for ``tokenizer``.

    ``vision_act``: the vision tower's MLP activation; ``"gelu"`` to take an open_clip tower's
    weights (see :func:`init_vision_from_open_clip`).
    """
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = vision_config(config, vision_act)
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_hidden,
        intermediate_size=config.text_intermediate,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        num_key_value_heads=config.text_heads,
        max_position_embeddings=config.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    llava = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(CANVAS // config.patch_size) ** 2,
        vision_feature_layer=-1,  # trained from scratch: see the module docstring
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(llava)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def tower_name_pairs(blocks: int) -> list[tuple[str, str]]:
    """``(transformers name, open_clip name)`` of every weight a transformers CLIP vision
    transformer and an open_clip ``VisionTransformer`` of ``blocks`` layers share one to one.

    Not among them: open_clip's fused attention ``in_proj`` (transformers' separate q/k/v
    projections) and open_clip's output projection ``proj`` (no counterpart).
    """
    pairs = [
        ("embeddings.class_embedding", "class_embedding"),
        ("embeddings.patch_embedding.weight", "conv1.weight"),
        ("embeddings.position_embedding.weight", "positional_embedding"),
        ("pre_layrnorm.weight", "ln_pre.weight"),
        ("pre_layrnorm.bias", "ln_pre.bias"),
        ("post_layernorm.weight", "ln_post.weight"),
        ("post_layernorm.bias", "ln_post.bias"),
    ]
    for i in range(blocks):
        a, b = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for ours, theirs in (
            ("self_attn.out_proj", "attn.out_proj"),
            ("layer_norm1", "ln_1"),
            ("layer_norm2", "ln_2"),
            ("mlp.fc1", "mlp.c_fc"),
            ("mlp.fc2", "mlp.c_proj"),
        ):
            for kind in ("weight", "bias"):
                pairs.append((f"{b}{ours}.{kind}", f"{a}{theirs}.{kind}"))
    return pairs


def check_towers_fit(visual, tower, config) -> None:
    """Raise unless an open_clip ``VisionTransformer`` and a transformers CLIP vision transformer
    (``tower``, configured by ``config``) have the same depth, patch convolution, positions and
    activation (GELU, open_clip's), i.e. unless :func:`tower_name_pairs` maps one onto the other.

    Raises:
        SelfcorrectError: they differ.
    """
    blocks = len(visual.transformer.resblocks)
    patch, positions = tower.embeddings.patch_embedding.weight, tower.embeddings.position_embedding.weight
    if (
        blocks != config.num_hidden_layers
        or visual.conv1.weight.shape != patch.shape
        or visual.positional_embedding.shape != positions.shape
        or config.hidden_act != "gelu"
    ):
        raise SelfcorrectError(
            f"the open_clip image tower ({blocks} layers, patch conv {tuple(visual.conv1.weight.shape)}, gelu) "
            f"does not fit the transformers vision tower ({config.num_hidden_layers} layers, patch conv "
            f"{tuple(patch.shape)}, activation {config.hidden_act})"
        )


def init_vision_from_open_clip(tower, clip) -> None:
    """Copy an open_clip ViT's image tower into a transformers CLIP vision tower, in place.

    The two are the same network under other names (pre-norm ViT with a class token, learned
    positions, bias-free patch convolution): open_clip's fused ``in_proj`` splits into the
    q/k/v projections; ``ln_pre``/``ln_post`` are HF's ``pre_layrnorm``/``post_layernorm``. The
    projection ``proj`` has no counterpart (LLaVA's projector reads the tower's hidden states).
    Written by hand because transformers' converter script is for OpenAI checkpoints, not
    open_clip state dicts.

    Args:
        tower: a :class:`transformers.CLIPVisionModel` (a LLaVA model's ``model.vision_tower``)
            with ``hidden_act="gelu"`` (open_clip's default activation).
        clip: an open_clip ``CLIP`` whose ``visual`` is a ``VisionTransformer`` of the same width,
            depth, heads and patch size.

    Raises:
        SelfcorrectError: the two towers differ in shape or activation.
    """
    import torch

    config = tower.config
    tower = getattr(tower, "vision_model", tower)  # CLIPVisionModel holds the transformer
    visual = clip.visual
    check_towers_fit(visual, tower, config)
    source = {k: v.detach().float() for k, v in visual.state_dict().items()}
    blocks = len(visual.transformer.resblocks)
    target = {ours: source[theirs] for ours, theirs in tower_name_pairs(blocks)}
    for i in range(blocks):
        a, b = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for name, part in zip("qkv", source[a + "attn.in_proj_weight"].chunk(3)):
            target[f"{b}self_attn.{name}_proj.weight"] = part
        for name, part in zip("qkv", source[a + "attn.in_proj_bias"].chunk(3)):
            target[f"{b}self_attn.{name}_proj.bias"] = part
    with torch.no_grad():
        missing, unexpected = tower.load_state_dict(target, strict=False)
    left = [k for k in missing if "position_ids" not in k]
    if left or unexpected:
        raise SelfcorrectError(f"open_clip -> CLIP vision tower mapping is incomplete: {left or unexpected}")


def vision_activation(folder: Path | None) -> str:
    """The tower activation a model needs to take its tower from ``folder`` (see :func:`init_vision_from`)."""
    if folder is None:
        return "quick_gelu"
    if (Path(folder) / "open_clip_config.json").is_file():
        return "gelu"  # open_clip's
    config = Path(folder) / "config.json"
    if not config.is_file():
        raise SelfcorrectError(f"{folder} holds neither an open_clip model nor a vision tower")
    return json.loads(config.read_text()).get("hidden_act", "quick_gelu")


def init_vision_from(model, folder: Path, config: VLMConfig, new_projector: bool = False) -> None:
    """Start the LLaVA model's vision tower from ``folder``, in place.

    ``folder`` holds an open_clip model (its image tower, see :func:`init_vision_from_open_clip`)
    or a tower saved by :mod:`selfcorrect.train.world_vision`. ``new_projector``: re-initialise the
    projector too (normal, std ``initializer_range``; zero biases, as transformers initialises it),
    for a trained model whose projector was fitted to the tower being replaced.

    Raises:
        SelfcorrectError: no tower in ``folder``, or one of other sizes or activation.
    """
    import torch

    tower = model.model.vision_tower
    if (Path(folder) / "open_clip_config.json").is_file():
        from selfcorrect.vision.clip import load_world_clip

        init_vision_from_open_clip(tower, load_world_clip(folder).model)
    else:
        from selfcorrect.train.world_vision import load_tower

        source = load_tower(folder, config)
        if source.config.hidden_act != tower.config.hidden_act:
            raise SelfcorrectError(
                f"the tower in {folder} uses {source.config.hidden_act}, the model's {tower.config.hidden_act}"
            )
        tower.load_state_dict(source.state_dict())
    if new_projector:
        std = model.config.text_config.initializer_range
        with torch.no_grad():
            for layer in model.model.multi_modal_projector.modules():
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.normal_(0.0, std)
                    if layer.bias is not None:
                        layer.bias.zero_()


def parameter_counts(model) -> dict[str, int]:
    """Parameters of the vision tower, the projector, the language model (embedding counted once)."""
    inner = model.model
    counts = {
        "vision": sum(p.numel() for p in inner.vision_tower.parameters()),
        "projector": sum(p.numel() for p in inner.multi_modal_projector.parameters()),
        "language": sum(p.numel() for p in inner.language_model.parameters()),
    }
    counts["total"] = sum(p.numel() for p in model.parameters())  # tied weights counted once
    return counts


def assistant_loss(logits, labels, tasks: list[str] | None = None):
    """Next-token cross-entropy on the labelled (assistant) tokens.

    Args:
        logits: ``(B, T, V)``; position ``t`` predicts token ``t + 1``.
        labels: ``(B, T)`` long, :data:`IGNORE` where there is no loss.
        tasks: B task names, to also return the loss per task.

    Returns:
        ``(loss, by_task)``: the mean over all labelled tokens of the batch (a scalar), and
        ``{task: (summed loss, token count)}`` as Python floats (empty without ``tasks``).
    """
    import torch.nn.functional as F

    target = labels[:, 1:]  # (B, T-1)
    per_token = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE, reduction="none"
    ).view(target.shape)  # (B, T-1), 0 where ignored
    counted = target != IGNORE
    loss = per_token.sum() / counted.sum().clamp(min=1)
    by_task: dict[str, tuple[float, int]] = {}
    if tasks is not None:
        sums, counts = per_token.detach().sum(1).tolist(), counted.sum(1).tolist()
        for task, s, c in zip(tasks, sums, counts):
            total, n = by_task.get(task, (0.0, 0))
            by_task[task] = (total + s, n + c)
    return loss, by_task


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate_answers(vlm, data, turns: int = 100, batch_size: int = 16, max_new_tokens: int = 64) -> dict:
    """Exact-match accuracy of greedy answers on the first ``turns`` assistant turns of ``data``.

    Each assistant turn is asked with the conversation before it (earlier answers included, as
    the data set gives them), through :meth:`selfcorrect.vision.vlm.VLM.chat`.

    Args:
        vlm: a :class:`~selfcorrect.vision.vlm.VLM`.
        data: a map-style data set of :class:`~selfcorrect.world.conversations.Example`.
        turns: how many assistant turns to answer.

    Returns:
        ``{"turns", "exact_match", "by_task": {task: {"turns", "exact_match"}}, "examples"}``:
        exact match after stripping whitespace; ``examples`` holds the first few answers.
    """
    images, prompts, expected, tasks = [], [], [], []
    for index in range(len(data)):
        example = data[index]
        for k, message in enumerate(example.messages):
            if message["role"] == "assistant" and len(prompts) < turns:
                images.append(list(example.images))
                prompts.append(example.messages[:k])
                expected.append("".join(p.get("text", "") for p in message["content"]).strip())
                tasks.append(example.task)
        if len(prompts) >= turns:
            break
    answers = vlm.chat(images, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    right = [a == e for a, e in zip(answers, expected)]
    by_task: dict[str, dict] = {}
    for task, ok in zip(tasks, right):
        entry = by_task.setdefault(task, {"turns": 0, "right": 0})
        entry["turns"] += 1
        entry["right"] += ok
    return {
        "turns": len(right),
        "exact_match": sum(right) / max(1, len(right)),
        "by_task": {
            t: {"turns": e["turns"], "exact_match": e["right"] / e["turns"]} for t, e in by_task.items()
        },
        "examples": [
            {"task": t, "expected": e, "answer": a} for t, e, a in list(zip(tasks, expected, answers))[:8]
        ],
    }


# ---------------------------------------------------------------------------------------------
# Training


def main(args: argparse.Namespace, conversations: Callable | None = None) -> Path | None:
    """Run (or resume) training, save the model and validate it; returns its folder (None when
    ``--time-limit`` stopped it first: a checkpoint is saved and a rerun resumes).

    Args:
        args: from :func:`parse_args`.
        conversations: ``conversations(size, seed, generated, mix=None) -> data set`` of
            :class:`~selfcorrect.world.conversations.Example` (item ``i`` a pure function of
            ``(seed, i)``; ``mix``: task -> weight, the tasks to draw); defaults to
            :func:`conversation_set`.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    config = run_config(PROFILES, args.profile)  # this run writes into its notes
    for name in ("steps", "batch_size", "num_workers", "eval_turns", "lr", "vision_lr_scale"):
        if getattr(args, name, None) is not None:
            setattr(config, name, getattr(args, name))
    mix = getattr(args, "mix", None)
    if mix is not None:
        config.notes["mix"] = mix
    conversations = conversations or conversation_set
    args.output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    set_seed(args.seed)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    generated = load_pool(args.generated) if args.generated else None
    P, p = accelerator.num_processes, accelerator.process_index
    # N: the size of each data set; items are made on the fly, and a size that does not depend on
    # --steps keeps every batch where it was when a resumed run is asked to train longer.
    B, N = config.batch_size, 10**9
    init_vision, init_model = getattr(args, "init_vision", None), getattr(args, "init_model", None)
    if init_model:  # first: a model that does not fit fails before any data is made
        model = load_for_training(init_model, config)
        config.notes["init_model"] = str(init_model)
        config.notes["init_model_steps"] = _steps_of(init_model)
    processor, run = _processor(
        accelerator, args.output_dir, config, conversations(N, args.seed, generated, mix=mix), init_model
    )
    if not init_model:
        model = build_model(config, processor.tokenizer, vision_act=vision_activation(init_vision))
    if init_vision:
        init_vision_from(model, init_vision, config, new_projector=bool(init_model))
        config.notes["init_vision"] = str(init_vision)
    pretrained_vision = bool(init_vision or init_model)

    # AdamW without weight decay on gains, biases and embeddings' norms (1-D parameters); a
    # pretrained vision tower learns at vision_lr_scale * lr, or not at all at 0.
    if pretrained_vision and config.vision_lr_scale == 0:
        model.model.vision_tower.requires_grad_(False)
    vision = {id(t) for t in model.model.vision_tower.parameters()}
    groups = []
    for in_vision in (False, True):
        lr = config.lr * (config.vision_lr_scale if in_vision and pretrained_vision else 1.0)
        if lr == 0:
            continue
        params = [t for t in model.parameters() if (id(t) in vision) == in_vision]
        groups.append(
            {"params": [t for t in params if t.ndim >= 2], "weight_decay": config.weight_decay, "lr": lr}
        )
        groups.append({"params": [t for t in params if t.ndim < 2], "weight_decay": 0.0, "lr": lr})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,  # linear warm-up, then cosine decay to a tenth
        lambda s: (
            min(1.0, (s + 1) / config.warmup)
            * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps)))
        ),
    )
    model, optimizer, lr_schedule = accelerator.prepare(model, optimizer, lr_schedule)
    start = resume(accelerator, args.output_dir, STAGE)

    # One data set per length bucket (its own seed, its tasks' mix), concatenated: bucket k holds
    # items [k * N, (k + 1) * N). The n-th batch of bucket k on process p is its conversations
    # [(n * P + p) * B, (n * P + p + 1) * B): a resumed run sees exactly the batches it would have.
    if len(run["buckets"]) == 1:
        data = conversations(N, args.seed, generated, mix=mix)
    else:
        data = torch.utils.data.ConcatDataset(
            [
                conversations(
                    N, args.seed * 1000 + k + 1, generated, mix={t: run["shares"][t] for t in tasks}
                )
                for k, tasks in enumerate(run["buckets"])
            ]
        )
    plan = batch_plan(config.steps, run["weights"], args.seed)
    loader = torch.utils.data.DataLoader(
        data,
        batch_sampler=[range(k * N + (n * P + p) * B, k * N + (n * P + p + 1) * B) for k, n in plan[start:]],
        collate_fn=Collator(processor),
        num_workers=config.num_workers,
    )
    bar = tqdm(
        total=config.steps,
        initial=start,
        desc="vlm",
        disable=args.no_progress or not accelerator.is_main_process,
    )
    started = time.perf_counter()
    deadline, done = deadline_of(args, started), start
    losses: list[float] = []
    task_loss: dict[str, float] = {}  # running mean per task, for the progress bar and the record
    model.train()
    for step, batch in enumerate(loader, start=start):
        tasks = batch.pop("tasks")
        labels = batch.pop("labels").to(accelerator.device)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            logits = model(**batch).logits  # (B, T, V); through forward(), so DDP syncs gradients
        loss, by_task = assistant_loss(logits, labels, tasks)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        for task, (total, n) in by_task.items():
            if n:
                task_loss[task] = 0.9 * task_loss.get(task, total / n) + 0.1 * total / n
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", **{t: f"{v:.2f}" for t, v in sorted(task_loss.items())})
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
        model = accelerator.unwrap_model(model).float().eval()
        record = {
            "profile": args.profile,
            "seed": args.seed,
            "config": dataclasses.asdict(config),
            "parameters": parameter_counts(model),
            "vocab_size": len(processor.tokenizer),
            "length_buckets": run,
            "image_tokens": (CANVAS // config.patch_size) ** 2,
            "generated_images": len(generated or []),
            "steps_this_run": config.steps - start,
            # Wall time of this invocation only: a resumed run does not know how long earlier ones took.
            "seconds_this_run": round(seconds, 1),
            "seconds_per_step": round(seconds / max(1, config.steps - start), 3),
            "loss_last_50": round(sum(losses[-50:]) / len(losses[-50:]), 4) if losses else None,
            "loss_by_task": {t: round(v, 4) for t, v in sorted(task_loss.items())},
            "hardware": _hardware(accelerator),
        }
        _save_model(model, processor, out, record)
        record["val"] = _validate(out, conversations, args.seed, generated, config.eval_turns)
        if record["val"]["turns"]:
            logger.info(
                "val: exact match %.3f on %d held-out turns", record["val"]["exact_match"], config.eval_turns
            )
        (out / "selfcorrect_training.json").write_text(json.dumps(record, indent=2))
        logger.info("saved %s", out)
    accelerator.wait_for_everyone()
    return out


def _processor(accelerator, output_dir: Path, config: VLMConfig, data, init_model: Path | None = None):
    """The processor and length buckets of this run, made once in ``OUTPUT_DIR/processor``.

    On the first run the tokenizer is trained on the first ``tokenizer_corpus`` conversations of
    ``data`` (or, with ``init_model``, taken from that model's processor) and the buckets measured
    on them (``world_vlm_run.json``); a resumed run reloads both, so that it uses exactly the
    vocabulary and batch plan its checkpoints were trained with. A saved run of another patch size
    or vocabulary budget is an error.

    Returns:
        ``(processor, run)``: a ``LlavaProcessor`` and the :func:`length_buckets` dict.
    """
    from transformers import AutoProcessor

    folder = output_dir / "processor"
    stamp = {"patch_size": config.patch_size, "vocab_size": config.vocab_size}
    if not (folder / "world_vlm_run.json").is_file():
        if accelerator.is_main_process:
            examples = [data[i] for i in range(min(config.tokenizer_corpus, len(data)))]
            if init_model:
                processor = AutoProcessor.from_pretrained(init_model)
            else:
                processor = build_processor(config, train_tokenizer(corpus_text(examples), config.vocab_size))
            image_tokens = (CANVAS // config.patch_size) ** 2
            buckets = length_buckets(examples, processor.tokenizer, image_tokens, config.length_buckets)
            run = {**stamp, **buckets}
            tmp = output_dir / ".tmp-processor"
            shutil.rmtree(tmp, ignore_errors=True)
            processor.save_pretrained(tmp)
            (tmp / "world_vlm_run.json").write_text(json.dumps(run, indent=2))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)  # the commit point
        accelerator.wait_for_everyone()
    run = json.loads((folder / "world_vlm_run.json").read_text())
    saved = {k: run[k] for k in stamp}
    if saved != stamp:
        raise SelfcorrectError(
            f"{output_dir} holds a run with another tokenizer or patch size ({saved}, this profile: "
            f"{stamp}); use a new --output-dir, or the profile it was trained with"
        )
    return AutoProcessor.from_pretrained(folder), {
        k: run[k] for k in ("buckets", "weights", "shares", "mean_tokens")
    }


def load_for_training(folder: Path, config: VLMConfig):
    """A saved world VLM in float32, to train further; its sizes must be ``config``'s.

    Raises:
        SelfcorrectError: ``folder`` holds no model, or one of other sizes than the profile's.
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    from selfcorrect.vision.vlm import load_checkpoint_config, locate_checkpoint

    location = locate_checkpoint(folder)
    saved = load_checkpoint_config(location, folder, trust_remote_code=False)
    vision, text = saved.vision_config, saved.text_config
    have = {
        "vision_hidden": vision.hidden_size,
        "vision_layers": vision.num_hidden_layers,
        "patch_size": vision.patch_size,
        "text_hidden": text.hidden_size,
        "text_layers": text.num_hidden_layers,
        "text_intermediate": text.intermediate_size,
    }
    wanted = {k: getattr(config, k) for k in have}
    if have != wanted:
        differ = ", ".join(f"{k} {have[k]} (profile: {wanted[k]})" for k in have if have[k] != wanted[k])
        raise SelfcorrectError(
            f"{folder} does not fit the profile: {differ}; pick the profile it was trained with"
        )
    return LlavaForConditionalGeneration.from_pretrained(location, dtype=torch.float32)


def _steps_of(folder: Path) -> int | None:
    """Optimiser steps behind a saved model, from its training record (earlier runs included)."""
    record = Path(folder) / "selfcorrect_training.json"
    if not record.is_file():
        return None
    config = json.loads(record.read_text()).get("config", {})
    return config.get("steps", 0) + (config.get("notes", {}).get("init_model_steps") or 0)


def _save_model(model, processor, out: Path, record: dict) -> None:
    """Write fp16 safetensors, configs and processor files to ``out`` atomically."""
    import copy

    import torch

    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    copy.deepcopy(model).to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    (tmp / "selfcorrect_training.json").write_text(json.dumps(record, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _validate(out: Path, conversations, seed: int, generated, turns: int) -> dict:
    """Load the saved folder with :class:`VLM` (the path every user takes) and answer held-out turns."""
    from selfcorrect.vision.vlm import VLM

    if turns <= 0:
        return {"turns": 0, "exact_match": None}
    vlm = VLM.from_pretrained(out, dtype="float32")
    held_out = conversations(10 * turns, seed + EVAL_SEED_OFFSET, generated)
    return evaluate_answers(vlm, held_out, turns)


def _hardware(accelerator) -> dict:
    import torch
    import transformers

    info = {
        "device": str(accelerator.device),
        "processes": accelerator.num_processes,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if accelerator.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(accelerator.device)
    return info


if __name__ == "__main__":
    raise SystemExit(run_script(main, parse_args))
