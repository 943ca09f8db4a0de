"""Pipeline presets: plain builder functions that return diffusers pipelines.

Each builder takes a Hugging Face Hub id or a local directory written by ``save_pretrained``
(``source``; each preset has a default), a dtype and a device, and loads the pipeline with
safetensors weights only (``use_safetensors=True``: no pickle files) and no remote code. The
embedded world's model goes through exactly the same path as the real checkpoints.

Each preset's sampling defaults (steps, guidance, resolution) are data, in ``PRESET_DEFAULTS``.
A checkpoint that is not there (a missing directory, or a Hub id that is not cached while the Hub
cannot be reached) is one :class:`WeightsNotFoundError` that says what to download and where to
point ``--source``.

Examples:

```py
>>> from selfcorrect.diffusion.presets import load_pipeline
>>> loaded = load_pipeline("sd-turbo", "/models/sd-turbo", device="cuda")
>>> image = loaded.pipeline("a red cube", **loaded.defaults.call_kwargs()).images[0]
>>> loaded.attention
'sdpa'
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import selfcorrect
from selfcorrect.diffusion.attention import resolve_backend, set_attention_backend
from selfcorrect.errors import SelfcorrectError

# Where the embedded world's text-to-image pipeline is installed (a save_pretrained directory).
WORLD_WEIGHTS_DIR = Path(selfcorrect.__file__).resolve().parent / "weights" / "world-t2i"
# A Hub repository id: exactly one "/", not a path such as "./x" or "/abs/x".
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


class WeightsNotFoundError(SelfcorrectError, FileNotFoundError):
    """A checkpoint that is not on this machine and cannot be downloaded now; says how to get it."""


class PresetError(SelfcorrectError, ValueError):
    """An unknown preset name or an invalid loading option."""


@dataclass(frozen=True)
class PresetDefaults:
    """A preset's default checkpoint and sampling settings.

    Attributes:
        source: Hub id or local directory loaded when the caller gives none.
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance weight (0 turns guidance off).
        resolution: image height and width in pixels.
    """

    source: str
    num_inference_steps: int
    guidance_scale: float
    resolution: int

    def call_kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments of a diffusers text-to-image ``__call__``."""
        return {
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "height": self.resolution,
            "width": self.resolution,
        }


PRESET_DEFAULTS = {
    # 64x64 images; the sampling defaults train/world_t2i.py saves with the model
    # (T2IConfig.sample_steps and guidance_scale, with its DDIM scheduler).
    "world": PresetDefaults(str(WORLD_WEIGHTS_DIR), 25, 3.0, 64),
    # runwayml/stable-diffusion-v1-5 was taken down in 2024; this is its maintained mirror.
    "sd15": PresetDefaults("stable-diffusion-v1-5/stable-diffusion-v1-5", 50, 7.5, 512),
    "sdxl": PresetDefaults("stabilityai/stable-diffusion-xl-base-1.0", 50, 5.0, 1024),
    # Adversarially distilled: one step, trained without classifier-free guidance.
    "sd-turbo": PresetDefaults("stabilityai/sd-turbo", 1, 0.0, 512),
}


def build_world(source: str | Path | None = None, *, dtype: Any = None, device: str = "cpu") -> Any:
    """The embedded world's text-to-image model: a ``StableDiffusionPipeline`` (64x64 images).

    Args:
        source: a directory written by ``save_pretrained`` (by default the packaged
            ``selfcorrect/weights/world-t2i``) or a Hub id.
        dtype: ``torch.dtype`` or a name (``"float16"``, ``"bf16"``, ...); float16 on CUDA and
            float32 elsewhere when ``None``.
        device: where the pipeline runs: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...

    Returns:
        The pipeline on ``device``. The other builders take the same arguments.

    Raises:
        WeightsNotFoundError: no pipeline at ``source``; the message says how to get one.
        PresetError: an unknown dtype name.
    """
    from diffusers import StableDiffusionPipeline

    hint = (
        "Train it with `python -m selfcorrect.train.world_t2i --output-dir runs/world-t2i`, then pass "
        f"--source runs/world-t2i/pipeline (or copy that directory to {WORLD_WEIGHTS_DIR})."
    )
    return _from_pretrained(StableDiffusionPipeline, "world", source, dtype, device, hint)


def build_sd15(source: str | Path | None = None, *, dtype: Any = None, device: str = "cpu") -> Any:
    """Stable Diffusion 1.5 as a ``StableDiffusionPipeline`` (512x512)."""
    from diffusers import StableDiffusionPipeline

    return _from_pretrained(StableDiffusionPipeline, "sd15", source, dtype, device)


def build_sdxl(source: str | Path | None = None, *, dtype: Any = None, device: str = "cpu") -> Any:
    """Stable Diffusion XL base 1.0 as a ``StableDiffusionXLPipeline`` (1024x1024)."""
    from diffusers import StableDiffusionXLPipeline

    return _from_pretrained(StableDiffusionXLPipeline, "sdxl", source, dtype, device)


def build_sd_turbo(source: str | Path | None = None, *, dtype: Any = None, device: str = "cpu") -> Any:
    """SD-Turbo (distilled SD 2.1) as a ``StableDiffusionPipeline``: 1 step, no guidance, 512x512."""
    from diffusers import StableDiffusionPipeline

    return _from_pretrained(StableDiffusionPipeline, "sd-turbo", source, dtype, device)


PRESETS = {"world": build_world, "sd15": build_sd15, "sdxl": build_sdxl, "sd-turbo": build_sd_turbo}


@dataclass
class LoadedPipeline:
    """A loaded pipeline and what was used to load it, for callers to record in their outputs.

    Attributes:
        pipeline: the diffusers pipeline, on ``device``.
        preset: the preset name.
        source: the Hub id or directory it was loaded from.
        dtype: the weights' dtype, e.g. ``"float32"``.
        device: the device it runs on.
        attention: the attention backend that runs (see :mod:`selfcorrect.diffusion.attention`).
        defaults: the preset's sampling defaults.
    """

    pipeline: Any
    preset: str
    source: str
    dtype: str
    device: str
    attention: str
    defaults: PresetDefaults


def load_pipeline(
    preset: str,
    source: str | Path | None = None,
    *,
    dtype: Any = None,
    device: str = "cpu",
    attention: str = "auto",
) -> LoadedPipeline:
    """Load a preset's pipeline onto ``device`` and set its attention backend.

    Args:
        preset: a key of ``PRESETS``.
        source: Hub id or local directory; the preset's default when ``None``.
        dtype: ``torch.dtype`` or a name (``"float16"``, ``"bf16"``, ...); float16 on CUDA and
            float32 elsewhere when ``None``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        attention: ``"auto"``, ``"xformers"``, ``"sdpa"`` or ``"math"``.

    Raises:
        PresetError: unknown preset or dtype.
        WeightsNotFoundError: the checkpoint is missing (the message says how to get it).
        AttentionBackendError: the requested attention backend cannot run here. Checked before
            loading, so a bad choice fails in a second, not after minutes of loading.
    """
    if preset not in PRESETS:
        raise PresetError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    resolve_backend(attention, device)
    pipe = PRESETS[preset](source, dtype=dtype, device=device)
    return LoadedPipeline(
        pipeline=pipe,
        preset=preset,
        source=str(source or PRESET_DEFAULTS[preset].source),
        dtype=str(pipe.dtype).removeprefix("torch."),
        device=str(pipe.device),
        attention=set_attention_backend(pipe, attention),
        defaults=PRESET_DEFAULTS[preset],
    )


def _download_hint(repo: str) -> str:
    # Only the diffusers-format folders in fp32: the repos also hold single-file checkpoints,
    # fp16 variants and pickles, several times the size of what is loaded.
    return (
        "Download it on a machine with network access:\n"
        f'  hf download {repo} --local-dir DIR --include "*.json" --include "*.txt" '
        '--include "*/*.safetensors" --exclude "*fp16*" --exclude "*non_ema*"\n'
        "then pass --source DIR (or source=DIR in Python)."
    )


def _resolve_dtype(dtype: Any, device: str) -> Any:
    import torch

    if dtype is None:
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) not in _DTYPES:
        raise PresetError(f"unknown dtype {dtype!r}; choose one of: {', '.join(_DTYPES)}")
    return getattr(torch, _DTYPES[str(dtype)])


def _from_pretrained(
    pipeline_class: Any,
    preset: str,
    source: str | Path | None,
    dtype: Any,
    device: str,
    hint: str | None = None,
) -> Any:
    # `hint` says how to get the weights; by default, how to download the Hub repo.
    dtype = _resolve_dtype(dtype, device)
    source = str(source or PRESET_DEFAULTS[preset].source)
    path = Path(source).expanduser()
    is_local = path.exists() or not _HUB_ID.fullmatch(source)
    hint = hint or _download_hint(PRESET_DEFAULTS[preset].source if is_local else source)
    # Check that the checkpoint is there before diffusers tries: its own failures are a hub
    # traceback plus log lines about "the root cause in the stacktrace above".
    if is_local:
        if not (path / "model_index.json").is_file():
            what = "is not a directory" if not path.is_dir() else "has no model_index.json"
            raise WeightsNotFoundError(f"no {preset} pipeline at {path}: it {what}.\n{hint}")
    else:
        from huggingface_hub import constants, try_to_load_from_cache

        # try_to_load_from_cache returns the file's path, or None / a sentinel when not cached.
        if constants.HF_HUB_OFFLINE and not isinstance(
            try_to_load_from_cache(source, "model_index.json"), str
        ):
            raise WeightsNotFoundError(
                f"{source!r} is neither a local directory nor in the Hugging Face cache, and "
                f"downloads are off (HF_HUB_OFFLINE=1).\n{hint}"
            )
    try:
        pipe = pipeline_class.from_pretrained(
            source, dtype=dtype, use_safetensors=True, trust_remote_code=False
        )
    except OSError as e:
        # diffusers turns every missing file into an OSError: the Hub unreachable or without the
        # repo (the hub error is the cause), a directory with only pickle (.bin) weights, ...
        error = e.__cause__ or e
        reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        if "safetensors" in reason:
            reason += " (selfcorrect loads safetensors weights only, never pickle files)"
        raise WeightsNotFoundError(
            f"cannot load the {preset} pipeline from {source}: {reason}\n{hint}"
        ) from e
    return pipe.to(device)
