"""Train TLDR's token-level reward head on a frozen VLM backbone, and measure it.

TLDR (Fu et al., ICLR 2025; notes/anchor-critics.md, section c) trains a per-token binary head on
correct responses and synthetic hard negatives whose wrong tokens are known. Here the data are
:class:`selfcorrect.world.perturb.PerturbationSet` pairs (a true caption or VQA answer of a world
image and a copy with one minimal false edit of one of seven types: spatial, attribute, attribute
binding, object, counting, small object, counterfactual), and the model is
:class:`selfcorrect.critics.tldr.TokenHead` on a frozen :class:`~selfcorrect.vision.vlm.VLM`.

**Steps.**

1. *Features, once per example.* The backbone is frozen, so its per-token features (last hidden
   state, and the token's log-probability, the best log-probability and the entropy there; see
   :func:`selfcorrect.critics.tldr.response_states`) are computed once for the train / val / test
   pairs and cached in ``OUTPUT_DIR/features`` (safetensors, written atomically; a rerun reuses
   them). Token labels come from the perturbation's wrong character spans through the
   tokenizer's offsets (:func:`token_labels`): 1 = correct, 0 = wrong.
2. *Head.* AdamW on the per-token binary cross-entropy (:func:`token_bce`, TLDR's loss) over
   random batches of cached tokens; checkpoints every ``--checkpoint-every`` steps (atomic,
   resumable: a rerun with the same ``--output-dir`` continues).
3. *Threshold.* The reward below which a token is flagged is chosen on the val split to maximise
   response accuracy (:func:`best_threshold`); TLDR's fixed 0.5 is reported too.
4. *Evaluation* on the test split: token-level AUROC (:func:`auroc`, by ranks), response accuracy
   (a response is judged wrong iff any token is flagged, TLDR's rule), per perturbation type, per
   task and image source, and how often the first flagged token of a caught error is a wrong one
   (what :func:`~selfcorrect.critics.tldr.correct_caption` relies on). The saved head is reloaded
   through :meth:`TldrCritic.from_pretrained <selfcorrect.critics.tldr.TldrCritic.from_pretrained>`
   and must reproduce the cached rewards.
5. *Controls.* Ablations (other feature sets) are trained on the same cache. A **blind control**
   trains and tests the same head on the same pairs shown with a blank image: what it still
   detects it detects from the text alone (a perturbation that breaks the form of a caption, or a
   language prior), so the gap to the seeing head is what the image contributes. Finally the
   backbone's own greedy captions of fresh test images are corrected
   (:func:`~selfcorrect.critics.tldr.correct_caption`) and checked against the scene spec, for
   the head and each ablation.

Usage::

    python -m selfcorrect.train.tldr --profile cpu --output-dir runs/tldr
    accelerate launch -m selfcorrect.train.tldr --profile gpu --output-dir runs/tldr

The head lands in ``OUTPUT_DIR/head`` (``config.json`` naming the backbone, ``head.safetensors``,
``tldr_eval.json``, a README); copy it to ``selfcorrect/weights/tldr-head`` to ship it. The
evaluation record is also written to ``OUTPUT_DIR/tldr_eval.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from selfcorrect.errors import SelfcorrectError
from selfcorrect.train.world_t2i import run_config, run_script, training_parser

logger = logging.getLogger(__name__)

STAGE = "tldr"  # checkpoint folder prefix
IGNORE = -100  # label of tokens without loss
CORRECT, WRONG = 1, 0  # token labels: the head predicts P(correct)
CACHE_VERSION = 3
THRESHOLD_FREE = 0.5  # threshold passed where only the threshold-free metrics are read


@dataclass
class TldrConfig:
    """Data sizes, head and schedule of one run. See :data:`PROFILES` for the named presets.

    train_pairs / val_pairs / test_pairs: image-response pairs (a true and a perturbed response
      each) per split.
    vqa_share: share of VQA answers among the pairs whose type allows one.
    features: the head's feature set (:data:`selfcorrect.critics.tldr.FEATURES`).
    mlp: hidden width of the head (0: TLDR's linear head).
    ahead: following tokens whose features each token's head input also has
      (:func:`selfcorrect.critics.tldr.look_ahead`; 0: the token's own only, as in TLDR).
    ablations: other ``(features, ahead)`` heads trained on the same cache and reported (not saved).
    steps / batch_tokens / lr / weight_decay: AdamW on random token batches, cosine decay to a tenth.
    extract_batch_size: pairs per backbone forward pass (2 responses each).
    num_workers: loader processes that build the pairs while the backbone runs.
    correction_examples: test images whose greedy caption is corrected and re-checked (0: none).
    blind_pairs / blind_test_pairs: train / test pairs of the blind control (the same pairs with a
      blank image; 0: no control).
    """

    train_pairs: int = 3000
    val_pairs: int = 500
    test_pairs: int = 1000
    vqa_share: float = 0.3
    features: str = "hidden+logprob"
    mlp: int = 0
    ahead: int = 0
    ablations: tuple[tuple[str, int], ...] = (("hidden", 0),)
    steps: int = 3000
    batch_tokens: int = 1024
    lr: float = 3e-3
    weight_decay: float = 0.01
    extract_batch_size: int = 16
    num_workers: int = 0
    mixed_precision: str = "no"
    correction_examples: int = 100
    blind_pairs: int = 1000
    blind_test_pairs: int = 500
    notes: dict = field(default_factory=dict)


PROFILES: dict[str, TldrConfig] = {
    # Seconds, for tests: learns nothing.
    "tiny": TldrConfig(
        ahead=2,
        train_pairs=6,
        val_pairs=4,
        test_pairs=4,
        steps=4,
        batch_tokens=32,
        extract_batch_size=4,
        correction_examples=1,
        blind_pairs=4,
        blind_test_pairs=2,
    ),
    # Minutes on 2 CPU cores with the world VLM. An MLP head: held-out token AUROC 0.871 vs
    # 0.821 for TLDR's linear head on the same cached features (world VLM of run 7;
    # benchmarks/results/tldr_head_linear_vs_mlp.md); reading the next 2 tokens too: 0.905 vs
    # 0.868, the window chosen on val (world VLM of run 9; benchmarks/results/tldr_look_ahead.md).
    "cpu": TldrConfig(mlp=256, ahead=2, ablations=(("hidden+logprob", 0), ("hidden", 2))),
    # One GPU: ten times the data.
    "gpu": TldrConfig(
        train_pairs=40000,
        val_pairs=2000,
        test_pairs=4000,
        mlp=256,
        ahead=2,
        ablations=(("hidden+logprob", 0), ("hidden", 2)),
        steps=20000,
        batch_tokens=8192,
        lr=1e-3,
        extract_batch_size=128,
        num_workers=8,
        mixed_precision="bf16",
        correction_examples=500,
        blind_pairs=10000,
        blind_test_pairs=2000,
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_parser(__doc__, PROFILES, "features, checkpoints and OUTPUT_DIR/head go here", 1000)
    p.add_argument(
        "--backbone",
        default="world",
        help="the frozen VLM: 'world' (default), a hub id or a folder; written into the head's config",
    )
    p.add_argument("--train-pairs", type=int, default=None, help="override the profile's training pairs")
    p.add_argument("--steps", type=int, default=None, help="override the profile's head training steps")
    p.add_argument("--features", default=None, help="hidden or hidden+logprob (default: the profile's)")
    p.add_argument("--mlp", type=int, default=None, help="head hidden width; 0 for a linear head")
    p.add_argument(
        "--ahead",
        type=int,
        default=None,
        help="following tokens each token's head input also reads (default: the profile's; 0 as in TLDR)",
    )
    p.add_argument(
        "--correction-examples", type=int, default=None, help="greedy captions corrected at the end"
    )
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Pure functions: labels, loss, metrics


def token_labels(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """Per token :data:`CORRECT` (1) or :data:`WRONG` (0): wrong iff its characters overlap a
    wrong span. Offsets and spans are ``(start, end)`` character ranges of the response.

    Example: offsets ``[(0, 1), (1, 5), (5, 12)]`` of ``"a red circle"`` and the wrong span
    ``(2, 5)`` ("red") give ``[1, 0, 1]``.
    """
    return [WRONG if any(max(s, a) < min(e, b) for a, b in spans) else CORRECT for s, e in offsets]


def token_bce(logits, labels):
    """TLDR's loss: binary cross-entropy of P(token correct), averaged over labelled tokens.

    Args:
        logits: ``(...)`` float, the head's logits of P(correct).
        labels: ``(...)`` long, 1 (correct), 0 (wrong) or :data:`IGNORE` (no loss).

    Returns:
        A scalar; 0 when no token is labelled.
    """
    import torch.nn.functional as F

    mask = labels != IGNORE
    per_token = F.binary_cross_entropy_with_logits(
        logits.float(), labels.clamp(min=0).float(), reduction="none"
    )
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Area under the ROC curve of ``scores`` for the positive class (label 1), by ranks.

    The probability that a random positive scores higher than a random negative, ties counting
    one half (Mann-Whitney U / (n_pos n_neg), with average ranks for ties).

    Returns:
        The AUROC in [0, 1], or None when either class is empty.
    """
    pairs = sorted(zip(scores, labels), key=lambda p: p[0])
    n_pos = sum(1 for _, y in pairs if y == 1)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        average_rank = (i + j) / 2 + 1  # ranks i+1 .. j+1 share their mean
        rank_sum += average_rank * sum(1 for k in range(i, j + 1) if pairs[k][1] == 1)
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def best_threshold(min_rewards: Sequence[float], wrong: Sequence[bool]) -> tuple[float, float]:
    """The flagging threshold that maximises response accuracy, and that accuracy.

    A response is judged wrong iff its lowest token reward is below the threshold. Candidates are
    the midpoints between consecutive distinct lowest rewards (and 0 and 1); the middle one of the
    best wins.

    Args:
        min_rewards: per response its lowest token reward.
        wrong: per response whether it really is wrong.
    """
    values = sorted(set(min_rewards))
    candidates = [0.0] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [1.0]
    scored = [
        (sum((m < t) == w for m, w in zip(min_rewards, wrong)) / max(1, len(wrong)), t) for t in candidates
    ]
    best = max(s for s, _ in scored)
    ties = [t for s, t in scored if s == best]
    return ties[len(ties) // 2], best


def evaluate_rewards(responses: list[dict], rewards: list[list[float]], threshold: float) -> dict:
    """Token- and response-level metrics of per-token rewards against the labels.

    Args:
        responses: per response ``{"labels": [1/0 per token], "kind", "task", "source"}``
            (``kind`` ``"none"`` for true responses), optionally ``"pair"``: the id shared by a
            true response and its perturbed copy.
        rewards: per response its per-token rewards (P(correct)).
        threshold: a token is flagged when its reward is below this.

    Returns:
        ``token_auroc`` (rewards of correct vs wrong tokens), ``token_accuracy``,
        ``response_auroc`` (lowest reward of true vs perturbed responses), ``pair_accuracy``
        (share of pairs, when responses carry a ``"pair"`` id, whose perturbed response has the
        lower lowest reward: the wrong one of two answers about one image is told apart, ties
        counting a half), ``response_accuracy``
        (judged wrong iff any token is flagged), ``false_alarm_rate`` (true responses flagged),
        ``detection_rate`` (perturbed responses flagged), ``first_flag_wrong`` (share of flagged
        perturbed responses whose first flagged token is a wrong one), and per perturbation type /
        task / source: ``{"responses", "accuracy"}`` (for types: the detection rate), plus the
        per-type token AUROC (its wrong tokens against all correct tokens).
    """
    flat_scores = [r for rs in rewards for r in rs]
    flat_labels = [y for resp in responses for y in resp["labels"]]
    correct_scores = [s for s, y in zip(flat_scores, flat_labels) if y == CORRECT]
    mins = [min(rs) for rs in rewards]
    wrong = [resp["kind"] != "none" for resp in responses]
    judged = [m < threshold for m in mins]
    right = [j == w for j, w in zip(judged, wrong)]
    first_ok = []
    for resp, rs, w, j in zip(responses, rewards, wrong, judged):
        if w and j:
            first = next(k for k, r in enumerate(rs) if r < threshold)
            first_ok.append(resp["labels"][first] == WRONG)

    def share(values) -> float | None:
        values = list(values)
        return sum(values) / len(values) if values else None

    pairs: dict[int, dict[bool, float]] = {}
    for resp, m, w in zip(responses, mins, wrong):
        if "pair" in resp:
            pairs.setdefault(resp["pair"], {})[w] = m
    ordered = [
        1.0 if p[True] < p[False] else 0.5 if p[True] == p[False] else 0.0
        for p in pairs.values()
        if len(p) == 2
    ]

    by: dict[str, dict] = {"kind": {}, "task": {}, "source": {}}
    for key in by:
        for value in sorted({resp[key] for resp in responses}):
            idx = [i for i, resp in enumerate(responses) if resp[key] == value]
            entry = {"responses": len(idx), "accuracy": share(right[i] for i in idx)}
            if key == "kind" and value != "none":
                wrong_scores = [
                    r for i in idx for r, y in zip(rewards[i], responses[i]["labels"]) if y == WRONG
                ]
                entry["token_auroc"] = auroc(
                    correct_scores + wrong_scores, [1] * len(correct_scores) + [0] * len(wrong_scores)
                )
            by[key][value] = entry
    return {
        "threshold": threshold,
        "responses": len(responses),
        "tokens": len(flat_labels),
        "wrong_tokens": flat_labels.count(WRONG),
        "token_auroc": auroc(flat_scores, flat_labels),
        "token_accuracy": share((s >= threshold) == (y == CORRECT) for s, y in zip(flat_scores, flat_labels)),
        "response_auroc": auroc(mins, [0 if w else 1 for w in wrong]),
        "pair_accuracy": share(ordered),
        "response_accuracy": share(right),
        "false_alarm_rate": share(j for j, w in zip(judged, wrong) if not w),
        "detection_rate": share(j for j, w in zip(judged, wrong) if w),
        "first_flag_wrong": share(first_ok),
        "by_kind": by["kind"],
        "by_task": by["task"],
        "by_source": by["source"],
    }


# ---------------------------------------------------------------------------------------------
# Features


def extract(
    vlm, data, indices: Sequence[int], batch_size: int, progress: bool = False, num_workers: int = 0
) -> dict:
    """Backbone features and token labels of the pairs ``data[i]`` for ``i`` in ``indices``.

    The pairs are built by ``num_workers`` loader processes (rendering and checking perturbations
    is CPU work) while the backbone runs; ``batch_size`` pairs (2 responses each, one image) go
    through the backbone at a time.

    Returns:
        ``{"hidden": (T, D) float16, "logprob": (T, 3) float32, "labels": (T,) int8,
        "lengths": (R,) int64, "responses": [R dicts: pair, kind, task, source, edit, response]}``: the
        tokens of all R responses (true, then perturbed, per pair) concatenated, in the order of
        ``indices``.
    """
    import torch
    from tqdm.auto import tqdm

    from selfcorrect.critics.tldr import response_states

    hidden, logprob, labels, lengths, meta = [], [], [], [], []
    batches = [list(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=batches, collate_fn=_flatten, num_workers=num_workers
    )
    bar = tqdm(total=len(indices), desc="features", disable=not progress)
    for batch, examples in zip(batches, loader):
        pairs = [i for i in batch for _ in range(2)]
        states = response_states(
            vlm,
            [e.image for e in examples],
            [e.prompt for e in examples],
            [e.response for e in examples],
            batch_size=2 * batch_size,
        )
        for pair, e, s in zip(pairs, examples, states):
            hidden.append(s.hidden.half())
            logprob.append(s.logprob.float())
            labels += token_labels(s.offsets, e.spans)
            lengths.append(len(s.token_ids))
            meta.append(
                {
                    "pair": pair,
                    "kind": e.kind,
                    "task": e.task,
                    "source": e.source,
                    "edit": e.edit,
                    "response": e.response,
                }
            )
        bar.update(len(examples) // 2)
    bar.close()
    return {
        "hidden": torch.cat(hidden),
        "logprob": torch.cat(logprob),
        "labels": torch.tensor(labels, dtype=torch.int8),
        "lengths": torch.tensor(lengths, dtype=torch.int64),
        "responses": meta,
    }


def _flatten(pairs):
    """Collate: the two responses of each pair, in order."""
    return [e for pair in pairs for e in pair]


def save_cache(cache: dict, path: Path, stamp: dict) -> None:
    """Write a feature cache as ``path`` (safetensors) and ``path.json`` (metadata), atomically."""
    from safetensors.torch import save_file

    tensors = {k: cache[k].contiguous() for k in ("hidden", "logprob", "labels", "lengths")}
    tmp = path.with_name(f".tmp-{path.name}")
    save_file(tensors, str(tmp))
    meta = path.with_name(path.name + ".json")
    meta_tmp = meta.with_name(f".tmp-{meta.name}")
    meta_tmp.write_text(json.dumps({"stamp": stamp, "responses": cache["responses"]}))
    meta_tmp.replace(meta)
    tmp.replace(path)  # the commit point: the tensors exist only once the metadata does


def load_cache(path: Path, stamp: dict) -> dict | None:
    """A cache written by :func:`save_cache` with this ``stamp``; None when there is none.

    Raises:
        SelfcorrectError: the cache was made with other settings (backbone, sizes, seed).
    """
    from safetensors.torch import load_file

    meta = path.with_name(path.name + ".json")
    if not path.is_file() or not meta.is_file():
        return None
    info = json.loads(meta.read_text())
    if info["stamp"] != stamp:
        raise SelfcorrectError(
            f"{path} holds features made with other settings ({info['stamp']}, this run: {stamp}); "
            "use a new --output-dir"
        )
    return {**load_file(str(path)), "responses": info["responses"]}


def backbone_fingerprint(vlm) -> str:
    """A short hash of the backbone's weights (each parameter's name, shape and sum).

    The feature caches are stamped with it, so that a rerun after the backbone was retrained (the
    name ``"world"`` stays, the weights change) extracts its features again instead of reusing
    stale ones; the head's config records it.
    """
    import hashlib

    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, parameter in sorted(vlm.model.named_parameters()):
            total = parameter.detach().double().sum().item()
            digest.update(f"{name}:{tuple(parameter.shape)}:{total:.10e};".encode())
    return digest.hexdigest()[:16]


def features_matrix(cache: dict, features: str, ahead: int = 0):
    """The head's inputs for every cached token: ``(T, F)`` float32 (see
    :func:`selfcorrect.critics.tldr.features_of`)."""
    import torch

    from selfcorrect.critics.tldr import look_ahead

    x = cache["hidden"].float()
    if features != "hidden":
        x = torch.cat([x, cache["logprob"]], dim=-1)
    return look_ahead(x, cache["lengths"], ahead)


# ---------------------------------------------------------------------------------------------
# Training


def train_head(
    accelerator,
    cache: dict,
    features: str,
    config: TldrConfig,
    seed: int,
    *,
    ahead: int | None = None,
    output_dir: Path | None = None,
    checkpoint_every: int = 0,
    progress: bool = False,
):
    """Train a :class:`~selfcorrect.critics.tldr.TokenHead` on cached features (``ahead``
    following tokens in each input; default ``config.ahead``).

    Each step draws ``batch_tokens`` tokens at random (seeded by ``(seed, step, process)``, so a
    resumed run draws the same batches). With ``output_dir`` the run checkpoints every
    ``checkpoint_every`` steps and resumes from the newest checkpoint.

    Returns:
        ``(head, losses)``: the trained head (unwrapped, eval mode) and the loss per step run.
    """
    import torch
    from tqdm.auto import tqdm

    from selfcorrect.critics.tldr import TokenHead
    from selfcorrect.train.world_t2i import checkpoint_if_due, resume

    ahead = config.ahead if ahead is None else ahead
    x = features_matrix(cache, features, ahead)  # (T, F)
    y = cache["labels"].long()  # (T,)
    head = TokenHead(cache["hidden"].shape[1], features, config.mlp, ahead)
    head.set_normalisation(x)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps))
    )
    head, optimizer, schedule = accelerator.prepare(head, optimizer, schedule)
    start = resume(accelerator, output_dir, STAGE) if output_dir is not None else 0
    x, y = x.to(accelerator.device), y.to(accelerator.device)
    losses = []
    bar = tqdm(total=config.steps, initial=start, desc=f"head ({features})", disable=not progress)
    head.train()
    for step in range(start, config.steps):
        generator = torch.Generator().manual_seed((seed * 1_000_003 + step) * 101 + accelerator.process_index)
        batch = torch.randint(len(y), (config.batch_tokens,), generator=generator).to(accelerator.device)
        loss = token_bce(head(x[batch]), y[batch])
        accelerator.backward(loss)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if output_dir is not None:
            extra = {"features": features, "ahead": ahead}
            checkpoint_if_due(accelerator, output_dir, STAGE, step + 1, config.steps, checkpoint_every, extra)
    bar.close()
    return accelerator.unwrap_model(head).eval(), losses


def cached_rewards(head, cache: dict, device) -> list[list[float]]:
    """Per response, the head's rewards (P(correct)) of its cached tokens."""
    import torch

    x = features_matrix(cache, head.features, head.ahead)
    with torch.inference_mode():
        rewards = torch.cat(
            [torch.sigmoid(head(x[i : i + 65536].to(device))).cpu() for i in range(0, len(x), 65536)]
        )
    return [r.tolist() for r in torch.split(rewards, cache["lengths"].tolist())]


def responses_of(cache: dict) -> list[dict]:
    """Per response its metadata and token labels (for :func:`evaluate_rewards`)."""
    import torch

    labels = torch.split(cache["labels"].long(), cache["lengths"].tolist())
    return [{**meta, "labels": lab.tolist()} for meta, lab in zip(cache["responses"], labels)]


# ---------------------------------------------------------------------------------------------
# The run


def main(args: argparse.Namespace) -> Path:
    """Extract (or reload) features, train (or resume) the head, calibrate, evaluate, save.

    Returns:
        The head folder, ``OUTPUT_DIR/head``.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from selfcorrect.critics.tldr import TldrCritic, save_head
    from selfcorrect.vision.vlm import VLM

    config = run_config(PROFILES, args.profile)
    for name in ("train_pairs", "steps", "features", "mlp", "ahead", "correction_examples"):
        if getattr(args, name, None) is not None:
            setattr(config, name, getattr(args, name))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    set_seed(args.seed)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    progress = not args.no_progress and accelerator.is_main_process
    started = time.perf_counter()
    vlm = VLM.from_pretrained(args.backbone, device=accelerator.device)
    fingerprint = backbone_fingerprint(vlm)

    # 1. Features, once per split; each process extracts its share, all of them read all shares.
    timings: dict[str, float] = {}
    sizes = {"train": config.train_pairs, "val": config.val_pairs, "test": config.test_pairs}
    blind = {
        "train": min(config.blind_pairs, config.train_pairs),
        "test": min(config.blind_test_pairs, config.test_pairs),
    }
    jobs = [(split, split, size, False) for split, size in sizes.items()]
    if blind["train"] and blind["test"]:
        jobs += [(f"blind-{split}", split, size, True) for split, size in blind.items()]
    shards = {}
    for name, split, size, blank in jobs:
        tick = time.perf_counter()
        shards[name] = _shards(
            fingerprint, accelerator, vlm, args, config, name, split, size, blank, progress
        )
        timings[f"features_{name}_seconds"] = round(time.perf_counter() - tick, 1)
    caches = {name: _concat(parts) for name, parts in shards.items()}
    for name, cache in caches.items():
        logger.info(
            "%s: %d responses, %d tokens (%d wrong)",
            name,
            len(cache["responses"]),
            len(cache["labels"]),
            int((cache["labels"] == WRONG).sum()),
        )

    # 2. The head (checkpointed).
    tick = time.perf_counter()
    head, losses = train_head(
        accelerator,
        caches["train"],
        config.features,
        config,
        args.seed,
        output_dir=args.output_dir,
        checkpoint_every=args.checkpoint_every,
        progress=progress,
    )
    timings["head_seconds"] = round(time.perf_counter() - tick, 1)

    out = args.output_dir / "head"
    if accelerator.is_main_process:
        device = accelerator.device
        test = responses_of(caches["test"])
        # 3. Threshold on val; 4. test metrics.
        threshold, val_accuracy = _calibrate(head, caches["val"], device)
        test_rewards = cached_rewards(head, caches["test"], device)
        record = {
            "command": _command(args),
            "profile": args.profile,
            "backbone": str(args.backbone),
            "backbone_fingerprint": fingerprint,
            "seed": args.seed,
            "config": dataclasses.asdict(config),
            "head_parameters": sum(t.numel() for t in head.parameters()),
            "data": {
                name: {
                    "responses": len(c["responses"]),
                    "tokens": len(c["labels"]),
                    "wrong_tokens": int((c["labels"] == WRONG).sum()),
                }
                for name, c in caches.items()
            },
            "threshold": {"chosen_on_val": threshold, "val_response_accuracy": val_accuracy},
            "test": evaluate_rewards(test, test_rewards, threshold),
            "test_at_0.5": _headline(evaluate_rewards(test, test_rewards, 0.5)),
            "loss_last_100": round(sum(losses[-100:]) / len(losses[-100:]), 4) if losses else None,
        }
        tmp = args.output_dir / ".tmp-head"
        shutil.rmtree(tmp, ignore_errors=True)
        save_head(
            head,
            tmp,
            backbone=str(args.backbone),
            threshold=threshold,
            extra={"backbone_fingerprint": fingerprint, "test": _headline(record["test"])},
        )
        # the saved head, reloaded as a user loads it, must give the cached rewards
        critic = TldrCritic.from_pretrained(tmp, vlm=vlm)
        record["reload_max_abs_diff"] = _reload_check(
            critic, args, config, test_rewards, accelerator.num_processes
        )
        corrections = (
            correction_inputs(vlm, config.correction_examples, args.seed)
            if config.correction_examples
            else None
        )
        if corrections:
            record["correction"] = correction_eval(critic, vlm, *corrections)

        # Ablations: other feature sets on the same cache (not saved, not checkpointed).
        record["ablations"] = {}
        for features, ahead in config.ablations:
            if (features, ahead) == (config.features, config.ahead):
                continue
            other, _ = train_head(accelerator, caches["train"], features, config, args.seed, ahead=ahead)
            t, _ = _calibrate(other, caches["val"], device)
            entry = _headline(evaluate_rewards(test, cached_rewards(other, caches["test"], device), t))
            if corrections:
                entry["correction"] = correction_eval(TldrCritic(vlm, other, threshold=t), vlm, *corrections)
            record["ablations"][ablation_name(features, ahead)] = entry
        # Blind control: the same head on features of a blank image; what it still finds, it
        # finds from the text alone.
        if "blind-train" in caches:
            record["blind_control"] = _blind_control(accelerator, shards, caches, config, args.seed)

        timings["total_seconds"] = round(time.perf_counter() - started, 1)
        record["timings"] = timings
        record["hardware"] = _hardware(accelerator)
        (tmp / "tldr_eval.json").write_text(json.dumps(record, indent=2))
        (tmp / "README.md").write_text(model_card(record))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        (args.output_dir / "tldr_eval.json").write_text(json.dumps(record, indent=2))
        logger.info(
            "test: token AUROC %.3f, response accuracy %.3f (threshold %.3f); saved %s",
            record["test"]["token_auroc"] or float("nan"),
            record["test"]["response_accuracy"],
            threshold,
            out,
        )
    accelerator.wait_for_everyone()
    return out


def _shards(
    fingerprint: str,
    accelerator,
    vlm,
    args,
    config: TldrConfig,
    name: str,
    split: str,
    size: int,
    blank: bool,
    progress: bool,
) -> list[dict]:
    """Every process's feature cache of ``size`` pairs of ``split`` (this process's made or reloaded)."""
    from selfcorrect.world.perturb import PerturbationSet

    P, p = accelerator.num_processes, accelerator.process_index
    stamp = {
        "version": CACHE_VERSION,
        "backbone": str(args.backbone),
        "fingerprint": fingerprint,
        "split": split,
        "pairs": size,
        "seed": args.seed,
        "vqa_share": config.vqa_share,
        "blank_image": blank,
        "processes": P,
    }
    folder = args.output_dir / "features"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}-{p}.safetensors"
    if load_cache(path, stamp) is None:
        data = PerturbationSet(size, split, seed=_split_seed(split, args.seed), vqa_share=config.vqa_share)
        data = BlankImages(data) if blank else data
        indices = list(range(p, size, P))
        save_cache(
            extract(vlm, data, indices, config.extract_batch_size, progress, config.num_workers), path, stamp
        )
    accelerator.wait_for_everyone()
    return [load_cache(folder / f"{name}-{k}.safetensors", stamp) for k in range(P)]


class BlankImages:
    """A pair data set with every image replaced by a blank one of the world's background colour."""

    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        from PIL import Image

        from selfcorrect.world.scene import DEFAULT_BACKGROUND

        pair = self.data[index]
        blank = Image.new("RGB", pair[0].image.size, DEFAULT_BACKGROUND)
        return tuple(dataclasses.replace(e, image=blank) for e in pair)


def _concat(parts: list[dict]) -> dict:
    import torch

    return {
        **{k: torch.cat([s[k] for s in parts]) for k in ("hidden", "logprob", "labels", "lengths")},
        "responses": [r for s in parts for r in s["responses"]],
    }


def _first(cache: dict, responses: int) -> dict:
    """The first ``responses`` responses of a cache."""
    tokens = int(cache["lengths"][:responses].sum())
    return {
        "hidden": cache["hidden"][:tokens],
        "logprob": cache["logprob"][:tokens],
        "labels": cache["labels"][:tokens],
        "lengths": cache["lengths"][:responses],
        "responses": cache["responses"][:responses],
    }


def _calibrate(head, cache: dict, device) -> tuple[float, float]:
    rewards = cached_rewards(head, cache, device)
    return best_threshold([min(r) for r in rewards], [r["kind"] != "none" for r in cache["responses"]])


def _blind_control(accelerator, shards: dict, caches: dict, config: TldrConfig, seed: int) -> dict:
    """Token and response AUROC (threshold-free) of a head trained and tested on blank-image
    features, against the same head trained and tested on the same pairs with their images."""
    out = {}
    seeing = {
        split: _concat(
            [
                _first(full, len(blind["responses"]))
                for full, blind in zip(shards[split], shards[f"blind-{split}"])
            ]
        )
        for split in ("train", "test")
    }
    for name, train, test in (
        ("seeing", seeing["train"], seeing["test"]),
        ("blind", caches["blind-train"], caches["blind-test"]),
    ):
        head, _ = train_head(accelerator, train, config.features, config, seed)
        m = evaluate_rewards(
            responses_of(test), cached_rewards(head, test, accelerator.device), THRESHOLD_FREE
        )
        out[name] = {
            "token_auroc": m["token_auroc"],
            "response_auroc": m["response_auroc"],
            "pair_accuracy": m["pair_accuracy"],
            "token_auroc_by_kind": {k: v.get("token_auroc") for k, v in m["by_kind"].items() if k != "none"},
        }
    out["train_pairs"], out["test_pairs"] = (
        len(seeing["train"]["responses"]) // 2,
        len(seeing["test"]["responses"]) // 2,
    )
    return out


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (options that differ from the defaults)."""
    defaults = vars(parse_args(["--output-dir", str(args.output_dir)]))
    parts = ["python -m selfcorrect.train.tldr"]
    for key, value in vars(args).items():
        if key in ("profile", "output_dir") or value != defaults.get(key):
            flag = "--" + key.replace("_", "-")
            parts.append(flag if value is True else f"{flag} {value}")
    return " ".join(parts)


def _split_seed(split: str, seed: int) -> int:
    from selfcorrect.world.conversations import SPLIT_SEEDS

    return SPLIT_SEEDS[split] + 1000 * seed  # seed 0: the world's split seeds


def _headline(metrics: dict) -> dict:
    keys = (
        "threshold",
        "token_auroc",
        "response_auroc",
        "pair_accuracy",
        "response_accuracy",
        "false_alarm_rate",
        "detection_rate",
        "first_flag_wrong",
    )
    return {k: metrics[k] for k in keys}


def _reload_check(
    critic, args, config: TldrConfig, test_rewards: list[list[float]], processes: int, n: int = 4
) -> float:
    """Largest difference between the reloaded critic's rewards and the cached ones on the first
    ``n`` test pairs of the first process's share (cached hidden states are float16, so about
    1e-3 is expected)."""
    from selfcorrect.world.perturb import PerturbationSet

    data = PerturbationSet(
        config.test_pairs, "test", seed=_split_seed("test", args.seed), vqa_share=config.vqa_share
    )
    indices = list(range(0, config.test_pairs, processes))[:n]
    examples = [e for i in indices for e in data[i]]
    if not examples:
        return 0.0
    verdicts = critic.reward_tokens_many(
        [e.image for e in examples], [e.prompt for e in examples], [e.response for e in examples]
    )
    return max(abs(a - b) for v, cached in zip(verdicts, test_rewards) for a, b in zip(v.rewards, cached))


def correction_inputs(vlm, n: int, seed: int) -> tuple[list, list[str]]:
    """``n`` test images (true responses of fresh test pairs, with their objects) and the
    backbone's greedy captions of them."""
    from selfcorrect.critics import prompts as P
    from selfcorrect.world.perturb import PerturbationSet

    data = PerturbationSet(n, "test", seed=_split_seed("test", seed) + 500, vqa_share=0.0)
    examples = [data[i][0] for i in range(n)]
    return examples, vlm.chat([e.image for e in examples], [P.DESCRIBE] * n, max_new_tokens=64)


def correction_eval(critic, vlm, examples: list, captions: list[str]) -> dict:
    """Correct the backbone's own greedy captions (:func:`correction_inputs`) with the critic's
    flags (:func:`~selfcorrect.critics.tldr.correct_caption`) and check them on the scene.

    A caption is right when it parses in the world grammar and every requirement holds on the
    image's true objects (the scene spec, or the degradation's ground truth).

    Returns:
        ``{"captions", "right_before", "right_after", "flagged", "flagged_right", "fixed",
        "broken", "examples"}`` (counts; a few flagged captions with their corrections).
    """
    from selfcorrect.critics import prompts as P
    from selfcorrect.critics.tldr import correct_caption

    said = [i for i, c in enumerate(captions) if c.strip()]  # an empty caption is wrong and not scored
    scored = (
        critic.reward_tokens_many(
            [examples[i].image for i in said], [P.DESCRIBE] * len(said), [captions[i] for i in said]
        )
        if said
        else []
    )
    verdicts = dict(zip(said, scored))
    stats = {
        "captions": len(captions),
        "right_before": 0,
        "right_after": 0,
        "flagged": 0,
        "flagged_right": 0,
        "fixed": 0,
        "broken": 0,
    }
    shown = []
    for i, (e, text) in enumerate(zip(examples, captions)):
        verdict = verdicts.get(i)
        flagged = verdict is not None and bool(verdict.spans)
        before = _holds(text, e.objects)
        after_text = (
            correct_caption(critic, vlm, e.image, P.DESCRIBE, text, verdict=verdict) if flagged else text
        )
        after = _holds(after_text, e.objects)
        stats["right_before"] += before
        stats["right_after"] += after
        stats["flagged"] += flagged
        stats["flagged_right"] += flagged and before
        stats["fixed"] += after and not before
        stats["broken"] += before and not after
        if flagged and len(shown) < 8:
            shown.append(
                {
                    "caption": text,
                    "flagged": [text[s:t] for s, t in verdict.spans],
                    "corrected": after_text,
                    "right_before": before,
                    "right_after": after,
                }
            )
    stats["examples"] = shown
    return stats


def _holds(text: str, objects) -> bool:
    from selfcorrect.world.grammar import parse_prompt
    from selfcorrect.world.requirements import evaluate

    try:
        return all(r.passed for r in evaluate(list(objects), parse_prompt(text)))
    except SelfcorrectError:
        return False


def ablation_name(features: str, ahead: int) -> str:
    """How a head's inputs are named in the record and the model card: ``hidden+logprob, next 3``."""
    return f"{features}, next {ahead}" if ahead else features


def model_card(record: dict) -> str:
    """A short README for the head folder: what it is, how it was trained, what it scores."""
    t = record["test"]

    def f(v):
        return "–" if v is None else f"{v:.3f}"

    rows = "\n".join(
        f"| {k} | {e['responses']} | {f(e['accuracy'])} | {f(e.get('token_auroc'))} |"
        for k, e in t["by_kind"].items()
    )
    ablations = "\n".join(
        f"| {k} | {f(v['token_auroc'])} | {f(v['response_accuracy'])} |"
        for k, v in record["ablations"].items()
    )
    blind = record.get("blind_control")
    control = (
        f"""
Blind control ({blind["train_pairs"]} train / {blind["test_pairs"]} test pairs; the same pairs with a
blank image): token AUROC {f(blind["blind"]["token_auroc"])} blind vs {f(blind["seeing"]["token_auroc"])}
seeing; response AUROC {f(blind["blind"]["response_auroc"])} vs {f(blind["seeing"]["response_auroc"])}; pair
accuracy {f(blind["blind"]["pair_accuracy"])} vs {f(blind["seeing"]["pair_accuracy"])}.
"""
        if blind
        else ""
    )
    c = record.get("correction")
    correction = (
        f"""
Correcting the backbone's own greedy captions of {c["captions"]} test images: {c["right_before"]} right
before, {c["right_after"]} after; {c["flagged"]} flagged ({c["flagged_right"]} of them right), {c["fixed"]}
fixed, {c["broken"]} broken.
"""
        if c
        else ""
    )
    return f"""# tldr-head: a TLDR token-level reward head

A per-token binary head ({ablation_name(record["config"]["features"], record["config"].get("ahead", 0))}, {"linear" if not record["config"]["mlp"] else "MLP " + str(record["config"]["mlp"])},
{record["head_parameters"]} parameters) on the frozen backbone `{record["backbone"]}`; load with
`selfcorrect.critics.tldr.TldrCritic.from_pretrained(folder)`. Reward = P(token correct); a token
is flagged below {record["threshold"]["chosen_on_val"]:.3f} (chosen on the val split).

Trained with `{record["command"]}` on
{record["data"]["train"]["responses"]} responses ({record["data"]["train"]["tokens"]} tokens) of
world images with TLDR-style perturbations.

## Test ({t["responses"]} responses, {t["tokens"]} tokens, {t["wrong_tokens"]} wrong)

| token AUROC | response AUROC | pair accuracy | response accuracy | false alarms | detection | first flag wrong |
|---:|---:|---:|---:|---:|---:|---:|
| {f(t["token_auroc"])} | {f(t["response_auroc"])} | {f(t["pair_accuracy"])} | {f(t["response_accuracy"])} | {f(t["false_alarm_rate"])} | {f(t["detection_rate"])} | {f(t["first_flag_wrong"])} |

| kind | responses | accuracy (detection for perturbations) | token AUROC |
|---|---:|---:|---:|
{rows}

Ablations (same data, threshold chosen on val):

| features (next tokens read) | token AUROC | response accuracy |
|---|---:|---:|
{ablations}
{control}{correction}"""


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
