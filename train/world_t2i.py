"""Train the embedded world's text-to-image model and save it as a plain diffusers pipeline.

The result is an ordinary :class:`diffusers.StableDiffusionPipeline` (AutoencoderKL, CLIP text
encoder + CLIP tokenizer, UNet2DConditionModel with cross-attention, a scheduler):
``StableDiffusionPipeline.from_pretrained(path)`` loads and runs it with no selfcorrect code.

Two stages, one script:

1. the VAE learns to compress 64x64 world images to 16x16x4 latents (reconstruction + a small KL);
2. the UNet and the text encoder learn to denoise those latents given a caption
   (v-prediction with Min-SNR loss weights, 10% of captions dropped for classifier-free guidance,
   EMA weights saved). The latents of a fixed set of rendered scenes are encoded once and cached:
   on a CPU the VAE encoder would otherwise cost a third of every UNet step.

Usage::

    python -m selfcorrect.train.world_t2i --profile cpu --output-dir runs/world-t2i
    accelerate launch -m selfcorrect.train.world_t2i --profile gpu --output-dir runs/world-t2i

Training can be killed at any time: checkpoints are written atomically every
``--checkpoint-every`` steps and a rerun with the same ``--output-dir`` resumes from the newest one.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from selfcorrect.errors import SelfcorrectError

logger = logging.getLogger(__name__)

CANVAS = 64  # image side in pixels
LATENT_SIDE = 16  # the VAE downsamples 4x
CAPTION_DROP = 0.1  # share of empty captions, for classifier-free guidance


@dataclass
class T2IConfig:
    """Sizes and schedule of one training run. See :data:`PROFILES` for the named presets.

    > Model
    vae_channels / unet_channels: ``block_out_channels`` of the VAE and the UNet.
    unet_attention: per UNet level (highest resolution first), whether it has cross-attention.
    unet_layers: ``layers_per_block`` of the UNet.
    text_hidden / text_layers: width and depth of the CLIP text encoder.

    > Schedule
    vae_steps / unet_steps: optimiser steps per stage; batch_size: images per step.
    vae_crop: the VAE trains on random square crops of this side (0: whole images). It is
      convolutional, so crops teach it the same thing at a quarter of the cost.
    latent_cache: scenes whose latents are encoded once for the UNet stage (0: encode every batch).
    prediction_type: what the UNet predicts, "v_prediction" or "epsilon".
    snr_gamma: Min-SNR-gamma loss weighting (Hang et al., 2023); None for the plain MSE.
    """

    vae_channels: tuple[int, ...] = (32, 64, 64)
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_attention: tuple[bool, ...] = (False, True, True)
    unet_layers: int = 1
    text_hidden: int = 128
    text_layers: int = 3
    vae_steps: int = 1500
    vae_crop: int = 32
    unet_steps: int = 6000
    batch_size: int = 32
    latent_cache: int = 60_000
    vae_lr: float = 1e-3
    unet_lr: float = 1e-3
    prediction_type: str = "v_prediction"
    snr_gamma: float | None = 5.0
    ema_decay: float = 0.999
    guidance_scale: float = 3.0  # default for sampling, stored with the pipeline
    sample_steps: int = 25
    mixed_precision: str = "no"
    texture_max: float = 0.15  # background texture of training renders drawn from [0, texture_max]
    notes: dict = field(default_factory=dict)


PROFILES: dict[str, T2IConfig] = {
    # Seconds: for tests. The model is too small and too short-trained to draw anything.
    "tiny": T2IConfig(
        vae_channels=(8, 16, 16),
        unet_channels=(16, 32, 32),
        text_hidden=32,
        text_layers=1,
        vae_steps=3,
        unet_steps=3,
        batch_size=4,
        latent_cache=16,
        sample_steps=2,
    ),
    # About an hour on 2 CPU cores (measured: VAE 9 min, latent cache 6 min, UNet 0.38 s per step).
    # The shipped weights are this profile trained longer: --unet-steps 14000.
    "cpu": T2IConfig(),
    # The quality run on one GPU (bf16 autocast): wider, deeper and longer.
    "gpu": T2IConfig(
        vae_channels=(64, 128, 128),
        unet_channels=(128, 256, 256),
        unet_attention=(True, True, True),
        unet_layers=2,
        text_hidden=256,
        text_layers=4,
        vae_steps=4000,
        vae_crop=0,
        unet_steps=40000,
        batch_size=128,
        latent_cache=0,
        unet_lr=2e-4,
        ema_decay=0.9995,
        mixed_precision="bf16",
    ),
}


def run_script(main, parse_args, argv: list[str] | None = None) -> int:
    """A training script's entry point: ``main(parse_args(argv))``, with a :class:`SelfcorrectError`
    (bad input: a missing folder, sizes that do not fit) turned into one message and exit code 2,
    as the ``selfcorrect`` CLI does; anything else is a bug and keeps its traceback."""
    import sys

    try:
        main(parse_args(argv))
    except SelfcorrectError as e:
        print(f"{Path(sys.argv[0]).stem}: error: {e}", file=sys.stderr)
        return 2
    return 0


def run_config(profiles: dict, name: str):
    """A run's own copy of profile ``name``: the run may change it (``--steps``, its notes)
    without the next run in the same process seeing it (``dataclasses.replace`` would share
    the profile's dicts)."""
    return copy.deepcopy(profiles[name])


def non_negative(text: str) -> float:
    """argparse type: a number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def output_folder(text: str) -> Path:
    """argparse type: a folder to write into (it may not exist yet; an existing file is refused)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return path


def training_parser(
    doc: str, profiles: dict, output_help: str, checkpoint_every: int, time_limit: bool = False
) -> argparse.ArgumentParser:
    """The flags every training script shares: ``--profile``, ``--output-dir``, ``--seed``,
    ``--checkpoint-every``, ``--no-progress`` (and ``--time-limit`` for the scripts whose loop
    honours it); each script adds its own."""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--profile", choices=sorted(profiles), default="cpu", help="size and schedule preset (default: cpu)"
    )
    p.add_argument("--output-dir", type=output_folder, required=True, help=output_help)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=checkpoint_every,
        help=f"steps between checkpoints (default: {checkpoint_every})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if time_limit:
        p.add_argument(
            "--time-limit",
            type=non_negative,
            default=None,
            metavar="SECONDS",
            help="stop after this many seconds of training, with a checkpoint; the same command run "
            "again resumes (for machines lent in short calls)",
        )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_parser(__doc__, PROFILES, "checkpoints go here; the pipeline in OUTPUT_DIR/pipeline", 500)
    p.add_argument(
        "--unet-steps",
        type=int,
        default=None,
        help="override the profile's UNet steps (to train longer on resume)",
    )
    p.add_argument("--vae-steps", type=int, default=None, help="override the profile's VAE steps")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--latent-cache", type=int, default=None, help="override the profile's latent cache size")
    p.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Model


def world_vocabulary() -> list[str]:
    """Every word the world's captions and prompt suites use (sorted, deterministic)."""
    from selfcorrect.world.grammar import caption
    from selfcorrect.world.sampling import random_scene
    from selfcorrect.world.suites import load_suite

    words: set[str] = set()
    texts = [p.prompt for split in ("train", "val", "test", "heldout") for p in load_suite(split)]
    for seed in range(2000):
        scene = random_scene(seed, max_objects=6)
        for style in CAPTION_STYLES:
            texts.append(caption(scene, style=style, rng=random.Random(seed)))
    for text in texts:
        words.update(w for w in _words(text))
    return sorted(words)


def _words(text: str) -> list[str]:
    return "".join(c if c.isalpha() else " " for c in text.lower()).split()


CAPTION_STYLES = ("canonical", "geneval", "natural", "positional", "counted")


def build_components(config: T2IConfig, tokenizer):
    """Randomly initialised VAE, text encoder and UNet of the real diffusers/transformers classes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(config.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(config.vae_channels),
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(16, config.vae_channels[0]),
        sample_size=CANVAS,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.text_hidden,
            intermediate_size=config.text_hidden * 4,
            num_hidden_layers=config.text_layers,
            num_attention_heads=max(1, config.text_hidden // 32),
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.unet_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.unet_attention))
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIDE,
        in_channels=4,
        out_channels=4,
        block_out_channels=config.unet_channels,
        layers_per_block=config.unet_layers,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=config.text_hidden,
        attention_head_dim=max(1, config.unet_channels[0] // 16),  # diffusers: this is the head count
        norm_num_groups=min(32, config.unet_channels[0]),
    )
    return vae, text_encoder, unet


def build_scheduler(prediction_type: str):
    from diffusers import DDPMScheduler

    # Cosine betas: a linear schedule spends too many steps at high noise for 16x16 latents.
    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type
    )


# ---------------------------------------------------------------------------------------------
# Data


def captioned_scene(
    rng: random.Random, pick_prompt, *, prompt_share: float = 0.5, max_objects: int = 4, texture: float = 0.0
):
    """One training ``(scene, caption)`` with no held-out colour-shape combination in either.

    With probability ``prompt_share`` a scene sampled for a train-suite prompt (``pick_prompt(rng)``
    chooses the :class:`~selfcorrect.world.suites.SuitePrompt`), else a random scene of 1 to
    ``max_objects`` objects captioned in a random style; redrawn until no object is of a held-out
    combination.
    """
    from selfcorrect.world.grammar import caption
    from selfcorrect.world.sampling import random_scene, sample_scene
    from selfcorrect.world.suites import is_heldout_combo

    while True:
        if rng.random() < prompt_share:
            item = pick_prompt(rng)
            scene = sample_scene(item.requirements, rng.randrange(2**31), texture=texture)
            text = item.prompt
        else:
            scene = random_scene(rng.randrange(2**31), max_objects=max_objects, texture=texture)
            text = caption(scene, style=rng.choice(CAPTION_STYLES), rng=rng)
        if not any(is_heldout_combo(o.colour, o.shape) for o in scene.objects):
            return scene, text


class CaptionedScenes:
    """Map-style dataset of (image tensor, caption) pairs, deterministic per (seed, index).

    Half the items are free random scenes captioned in a random style, half are scenes sampled
    for prompts of the train suite (so the model sees the suites' phrasing). Free scenes hold 1 to
    4 objects, as the suites' prompts do. Held-out colour-shape combinations never appear (they are
    the generalisation test). Captions are never empty here: the UNet stage drops them.
    """

    def __init__(self, seed: int, texture_max: float, length: int = 10**9):
        from selfcorrect.world.suites import load_suite

        self.seed, self.texture_max, self.length = seed, texture_max, length
        self.prompts = load_suite("train")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        import numpy as np
        import torch

        from selfcorrect.world.render import render

        rng = random.Random(self.seed * 1_000_003 + index)
        texture = rng.uniform(0.0, self.texture_max) if rng.random() < 0.5 else 0.0
        scene, text = captioned_scene(
            rng, lambda r: self.prompts[r.randrange(len(self.prompts))], max_objects=4, texture=texture
        )
        pixels = np.asarray(render(scene, CANVAS), dtype=np.float32) / 127.5 - 1.0  # (H, W, 3) in [-1, 1]
        return torch.from_numpy(pixels).permute(2, 0, 1), text


# ---------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(accelerator, output_dir: Path, stage: str, step: int, extra: dict) -> None:
    """Atomically write ``output_dir/checkpoints/{stage}-{step:07d}``; keep the newest two."""
    root = output_dir / "checkpoints"
    final = root / f"{stage}-{step:07d}"
    tmp = root / f".tmp-{stage}-{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / "progress.json").write_text(json.dumps({"stage": stage, "step": step, **extra}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # the rename is the commit point: a killed run leaves only .tmp-* behind
        for old in sorted(root.glob(f"{stage}-*"))[:-2]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def latest_checkpoint(output_dir: Path, stage: str) -> Path | None:
    found = sorted((output_dir / "checkpoints").glob(f"{stage}-*"))
    return found[-1] if found else None


def checkpoint_if_due(
    accelerator,
    output_dir: Path,
    stage: str,
    done: int,
    total: int,
    every: int,
    extra: dict | None = None,
    deadline: float | None = None,
) -> bool:
    """After step ``done`` of ``total``: :func:`save_checkpoint` every ``every`` steps and after
    the last one (``every`` 0: after the last one only). Every training loop calls it per step.

    ``deadline`` (a :func:`time.perf_counter` value, from ``--time-limit``): once it has passed
    before the last step, a checkpoint is saved and the answer is True: the loop stops there, and
    the same command run again resumes. Every process gets the same answer (accelerate's
    trigger), so that all stop after the same step.
    """
    out_of_time = False
    if deadline is not None and done < total:
        if time.perf_counter() > deadline:
            accelerator.set_trigger()
        out_of_time = accelerator.check_trigger()
    if done == total or (every and done % every == 0) or out_of_time:
        save_checkpoint(accelerator, output_dir, stage, done, extra or {})
    return out_of_time


def deadline_of(args: argparse.Namespace, started: float) -> float | None:
    """``started + --time-limit`` (None without one)."""
    limit = getattr(args, "time_limit", None)
    return None if limit is None else started + limit


def stopped_early(done: int, total: int, args: argparse.Namespace) -> None:
    """Say where a run stopped by ``--time-limit`` is, and how to go on."""
    logger.info(
        "stopped after step %d of %d (--time-limit %g s); the checkpoint is in %s: run the same command "
        "again to resume",
        done,
        total,
        args.time_limit,
        args.output_dir / "checkpoints",
    )


def resume(accelerator, output_dir: Path, stage: str) -> int:
    """Load the newest checkpoint of ``stage`` into the prepared objects; returns its step (0 if none)."""
    ckpt = latest_checkpoint(output_dir, stage)
    if ckpt is None:
        return 0
    accelerator.load_state(str(ckpt))
    logger.info("resumed %s from %s", stage, ckpt)
    return json.loads((ckpt / "progress.json").read_text())["step"]


# ---------------------------------------------------------------------------------------------
# Training


def main(args: argparse.Namespace) -> Path:
    """Run (or resume) both stages and save the pipeline; returns its directory."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    config = run_config(PROFILES, args.profile)
    for name in ("unet_steps", "vae_steps", "batch_size", "latent_cache"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    set_seed(args.seed)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    tokenizer_dir = args.output_dir / "tokenizer"
    if tokenizer_dir.exists():  # resume with exactly the vocabulary the checkpoint was trained on
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    else:
        from selfcorrect.train.tokenizer import build_world_tokenizer

        tokenizer = build_world_tokenizer(world_vocabulary())
        if accelerator.is_main_process:
            tokenizer.save_pretrained(tokenizer_dir)
    vae, text_encoder, unet = build_components(config, tokenizer)
    data = CaptionedScenes(args.seed, config.texture_max)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=args.num_workers,
        sampler=range(10**9),  # deterministic and endless
    )
    loader = accelerator.prepare(loader)  # shards batches across processes under accelerate launch

    started = time.perf_counter()
    scaling = _train_vae(accelerator, args, config, vae, loader)
    vae.register_to_config(scaling_factor=scaling)  # saved in the VAE's config.json
    unet, text_encoder = _train_unet(accelerator, args, config, vae, text_encoder, tokenizer, unet, loader)

    if accelerator.is_main_process:
        out = _save_pipeline(args, config, vae, text_encoder, tokenizer, unet, time.perf_counter() - started)
        logger.info("saved %s", out)
        return out
    return args.output_dir / "pipeline"


def _batches(accelerator, loader, skip: int):
    # Endless and resumable: batch i of a run is the same batch whether or not the run was resumed;
    # skipping happens in the sampler, so skipped batches are never rendered.
    return iter(accelerator.skip_first_batches(loader, skip) if skip else loader)


def vae_loss(recon, images, background=None, object_weight: float = 10.0):
    """L1 reconstruction loss with object pixels weighted up.

    Objects cover a small part of a world image; with a plain mean the flat background dominates
    and the VAE learns shapes long before it learns their colours. L1 keeps flat colours and sharp
    edges better than L2.

    Args:
        recon, images: ``(B, 3, H, W)`` in ``[-1, 1]``.
        background: ``(B, 3, 1, 1)`` background colour of each image; by default its top-left
            pixel, which is always background in a whole world image (objects keep off the edge)
            but not in a crop: pass the whole image's corner when training on crops.
        object_weight: weight of pixels that differ from the background.

    Returns:
        A scalar: the weighted mean absolute error.
    """
    if background is None:
        background = images[:, :, :1, :1]
    is_object = (images - background).abs().amax(dim=1, keepdim=True) > 0.15  # (B, 1, H, W)
    weight = 1.0 + (object_weight - 1.0) * is_object.float()
    return ((recon - images).abs() * weight).sum() / (weight.sum() * images.shape[1])


def diffusion_loss(pred, target, snr, snr_gamma: float | None, prediction_type: str):
    """Per-sample MSE of the UNet's prediction, weighted by Min-SNR-gamma (Hang et al., 2023).

    Min-SNR caps the weight of low-noise timesteps, whose easy losses otherwise dominate the
    gradient; the paper reports about 3x faster convergence. The weight ``min(snr, gamma)`` is
    expressed for what the UNet predicts: divided by ``snr`` for epsilon, by ``snr + 1`` for v.

    Args:
        pred, target: ``(B, C, H, W)``; target is the noise (epsilon) or the velocity (v).
        snr: ``(B,)`` signal-to-noise ratio ``alpha_bar / (1 - alpha_bar)`` of each sample's timestep.
        snr_gamma: the cap; ``None`` gives the plain mean squared error.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.

    Returns:
        A scalar loss.
    """
    per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
    if snr_gamma is None:
        return per_sample.mean()
    capped = snr.clamp(max=snr_gamma)
    weight = capped / snr if prediction_type == "epsilon" else capped / (snr + 1)
    return (per_sample * weight).mean()


def _train_vae(accelerator, args, config: T2IConfig, vae, loader) -> float:
    """Stage 1; returns the latent scaling factor (1 / std of latents, as Stable Diffusion does)."""
    import torch
    from tqdm.auto import tqdm

    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)
    vae, optimizer = accelerator.prepare(vae, optimizer)
    start = resume(accelerator, args.output_dir, "vae")
    bar = tqdm(
        total=config.vae_steps,
        initial=start,
        desc="vae",
        disable=args.no_progress or not accelerator.is_main_process,
    )
    batches = _batches(accelerator, loader, start)
    for step in range(start, config.vae_steps):
        images, _ = next(batches)
        background = images[:, :, :1, :1]
        if config.vae_crop:  # one random window per batch, seeded by the step
            g = random.Random(args.seed * 7919 + step)
            y, x = (g.randrange(CANVAS - config.vae_crop + 1) for _ in range(2))
            images = images[:, :, y : y + config.vae_crop, x : x + config.vae_crop]
        with accelerator.autocast():
            # Through forward(), so DDP syncs gradients. No KL term: Stable Diffusion weights it
            # 1e-6, which does nothing at this scale; the latent scale is normalised afterwards.
            recon = vae(images, sample_posterior=True).sample
            loss = vae_loss(recon.float(), images, background)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        checkpoint_if_due(
            accelerator, args.output_dir, "vae", step + 1, config.vae_steps, args.checkpoint_every
        )
    bar.close()
    vae = accelerator.unwrap_model(vae).eval().requires_grad_(False)
    with torch.no_grad():
        std = vae.encode(next(iter(loader))[0]).latent_dist.mean.std().item()
    return 1.0 / max(std, 1e-6)


def build_latent_cache(accelerator, args, config: T2IConfig, vae):
    """Encode ``config.latent_cache`` rendered scenes once; reload them on resume.

    Returns ``(latents, texts)``: ``(N, 4, 16, 16)`` float16 posterior means (unscaled) and the
    N captions. Scenes come from :class:`CaptionedScenes` with their own seed, so they are not
    the VAE stage's images. Saved atomically to ``OUTPUT_DIR/latent-cache.pt``.
    """
    import torch
    from tqdm.auto import tqdm

    path = args.output_dir / "latent-cache.pt"
    if path.exists():
        cached = torch.load(path, weights_only=True)
        if len(cached["texts"]) == config.latent_cache:
            return cached["latents"], cached["texts"]
    data = CaptionedScenes(args.seed + 1, config.texture_max, length=config.latent_cache)
    loader = torch.utils.data.DataLoader(data, batch_size=64, num_workers=args.num_workers)
    latents, texts = [], []
    vae = vae.to(memory_format=torch.channels_last)  # measured 2x faster on CPU for this encoder
    with torch.no_grad():
        for images, batch_texts in tqdm(
            loader, desc="latent cache", disable=args.no_progress or not accelerator.is_main_process
        ):
            images = images.to(accelerator.device, memory_format=torch.channels_last)
            mean = vae.encode(images).latent_dist.mean
            latents.append(mean.to("cpu", torch.float16))
            texts.extend(batch_texts)
    latents = torch.cat(latents)
    if accelerator.is_main_process:
        tmp = path.with_suffix(".tmp")
        torch.save({"latents": latents, "texts": texts}, tmp)
        tmp.rename(path)
    return latents, texts


def _train_unet(accelerator, args, config: T2IConfig, vae, text_encoder, tokenizer, unet, loader):
    import torch
    from diffusers.training_utils import EMAModel, compute_snr
    from tqdm.auto import tqdm

    scheduler = build_scheduler(config.prediction_type)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=0.01)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,  # 200 warm-up steps, then cosine decay to a tenth
        lambda s: (
            min(1.0, (s + 1) / 200)
            * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, config.unet_steps) / config.unet_steps)))
        ),
    )
    ema = EMAModel(params, decay=config.ema_decay, use_ema_warmup=True)
    unet, text_encoder, optimizer, lr_schedule = accelerator.prepare(
        unet, text_encoder, optimizer, lr_schedule
    )
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    vae.to(accelerator.device)
    cache = build_latent_cache(accelerator, args, config, vae) if config.latent_cache else None
    start = resume(accelerator, args.output_dir, "unet")
    bar = tqdm(
        total=config.unet_steps,
        initial=start,
        desc="unet",
        disable=args.no_progress or not accelerator.is_main_process,
    )
    # Offset so the UNet stage does not see exactly the VAE stage's batches.
    batches = None if cache else _batches(accelerator, loader, config.vae_steps + start)
    for step in range(start, config.unet_steps):
        # One generator per (step, process): a resumed run draws exactly the batches it would have.
        g = torch.Generator().manual_seed((args.seed * 1_000_003 + step) * 64 + accelerator.process_index)
        if cache:
            index = torch.randint(0, len(cache[1]), (config.batch_size,), generator=g)
            latents = cache[0][index].float().to(accelerator.device)
            texts = [cache[1][i] for i in index.tolist()]
        else:
            images, texts = next(batches)
            with torch.no_grad():
                latents = vae.encode(images).latent_dist.mean
        latents = latents * vae.config.scaling_factor  # (B, 4, 16, 16)
        drop = torch.rand(len(texts), generator=g) < CAPTION_DROP
        texts = ["" if d else t for d, t in zip(drop.tolist(), texts)]
        ids = tokenizer(
            texts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        noise = torch.randn(latents.shape, generator=g).to(latents.device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g)
        t = t.to(latents.device)
        noisy = scheduler.add_noise(latents, noise, t)
        target = noise if config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
        with accelerator.autocast():
            context = text_encoder(ids.to(accelerator.device))[0]  # (B, L, text_hidden)
            pred = unet(noisy, t, context).sample
        loss = diffusion_loss(
            pred.float(), target, compute_snr(scheduler, t), config.snr_gamma, config.prediction_type
        )
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(params)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        checkpoint_if_due(
            accelerator, args.output_dir, "unet", step + 1, config.unet_steps, args.checkpoint_every
        )
    bar.close()
    unet, text_encoder = accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder)
    ema.copy_to(params)  # ship the EMA weights: cleaner samples than the raw ones
    return unet, text_encoder


def _save_pipeline(args, config, vae, text_encoder, tokenizer, unet, seconds: float) -> Path:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    # DDIM, not DPM-Solver: with the cosine schedule the last alpha_cumprod is ~0, and DPM-Solver's
    # sigmas blow up there (its samples come out as coloured noise); DDIM samples cleanly.
    sampler = DDIMScheduler.from_config(build_scheduler(config.prediction_type).config)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sampler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = args.output_dir / "pipeline"
    tmp = args.output_dir / ".tmp-pipeline"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    record = {
        "profile": args.profile,
        "seed": args.seed,
        "config": dataclasses.asdict(config),
        # Wall time of this invocation only: a resumed run does not know how long earlier ones took.
        "seconds_this_run": round(seconds, 1),
        "device": str(next(unet.parameters()).device),
        "torch": torch.__version__,
        "defaults": {
            "num_inference_steps": config.sample_steps,
            "guidance_scale": config.guidance_scale,
            "height": CANVAS,
            "width": CANVAS,
        },
    }
    (tmp / "selfcorrect_training.json").write_text(json.dumps(record, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    raise SystemExit(run_script(main, parse_args))
