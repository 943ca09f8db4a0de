"""Attention backends for diffusers pipelines: ``auto``, ``xformers``, ``sdpa`` and ``math``.

``set_attention_backend(pipe, name)`` switches every diffusers model in a pipeline (UNet, VAE,
transformer) to one backend through diffusers' own API and returns the backend that actually
runs, read back from the models, so callers can record it in their outputs:

- ``xformers``: xFormers' ``memory_efficient_attention`` (``XFormersAttnProcessor``). CUDA only.
- ``sdpa``: PyTorch's ``F.scaled_dot_product_attention`` (``AttnProcessor2_0``), which itself
  dispatches to flash / memory-efficient / cuDNN / math kernels.
- ``math``: plain ``softmax(QK^T / sqrt(d)) V`` with explicit matmuls (``AttnProcessor``): the
  reference every other backend is compared with.
- ``auto``: ``xformers`` when its kernels run on the pipeline's device, else ``sdpa``.

A PyPI xFormers wheel is built against one torch release: with another torch it often imports
but has no working kernels. So "available" here means a tiny ``memory_efficient_attention`` call
ran on the target device; the answer is cached per device.

diffusers has two processor families. Classic processors (``AttnProcessor``, ``AttnProcessor2_0``,
``XFormersAttnProcessor``: the UNets and VAEs of SD 1.x / 2.x / XL) are switched with
``set_attn_processor`` / ``enable_xformers_memory_efficient_attention``; on those models
``ModelMixin.set_attention_backend`` is a silent no-op. Dispatch processors (newer transformers
such as Flux) carry an ``_attention_backend`` and are switched with ``set_attention_backend``.

The text encoders (transformers models) keep transformers' own attention choice (SDPA by
default); they run once per prompt, not once per denoising step.

Examples:

```py
>>> from selfcorrect.diffusion.attention import describe_backends, set_attention_backend
>>> describe_backends("cpu")["xformers"]["available"]
False
>>> set_attention_backend(pipe, "auto")  # logs and returns what runs
'sdpa'
```
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from typing import Any

from selfcorrect.errors import SelfcorrectError

logger = logging.getLogger(__name__)

ATTENTION_BACKENDS = ("auto", "xformers", "sdpa", "math")
XFORMERS_INSTALL_HINT = 'pip install "selfcorrect[xformers]"'

# Backend names of diffusers' dispatch processors (models/attention_dispatch.py), ours -> theirs.
_DISPATCH_NAMES = {"xformers": "xformers", "sdpa": "native", "math": "_native_math"}
# Classic processors this module switches between. Others (IP-Adapter, LoRA, custom diffusion,
# added-KV) carry weights or a different call signature: replacing them would change the model.
_CLASSIC_PROCESSORS = {
    "AttnProcessor": "math",
    "AttnProcessor2_0": "sdpa",
    "XFormersAttnProcessor": "xformers",
}
_FROM_DISPATCH = {theirs: ours for ours, theirs in _DISPATCH_NAMES.items()}


class AttentionBackendError(SelfcorrectError, RuntimeError):
    """An unknown attention backend, or one that cannot run here (the message says why)."""


@functools.cache
def xformers_problem(device: str = "cuda") -> str | None:
    """Why xFormers cannot run on ``device``, or ``None`` when its kernels ran there.

    Importing is not enough (a wheel built for another torch imports and then has no kernels),
    so this runs one ``memory_efficient_attention`` on ``(1, 16, 1, 16)`` fp16 tensors on the
    device. The answer is cached per device string; call ``xformers_problem.cache_clear()`` after
    installing xFormers in a running process.
    """
    import torch

    try:
        ops = importlib.import_module("xformers.ops")
    except (ImportError, OSError, RuntimeError) as e:
        if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "xformers":
            return f"xFormers is not installed ({XFORMERS_INSTALL_HINT})"
        # A compiled extension built for another torch fails here with undefined symbols; a
        # missing dependency of xFormers (triton, ...) with a ModuleNotFoundError of its own.
        return f"xFormers is installed but does not load with torch {torch.__version__}: {e}"
    if torch.device(device).type != "cuda":
        return f"xFormers kernels run on CUDA only, and the device is {device}"
    if not torch.cuda.is_available():
        return "xFormers kernels run on CUDA only, and no CUDA device is available"
    return _probe_kernels(ops, device)


def _probe_kernels(ops: Any, device: str) -> str | None:
    import torch

    try:
        q = torch.randn(1, 16, 1, 16, device=device, dtype=torch.float16)  # (B, tokens, heads, dim)
        ops.memory_efficient_attention(q, q, q)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)  # kernel launch errors surface at the sync
    # Any failure of this one call means "cannot run": xFormers raises NotImplementedError ("No
    # operator found"), RuntimeError (CUDA errors), ValueError or AttributeError depending on how
    # the build mismatches.
    except Exception as e:
        version = getattr(importlib.import_module("xformers"), "__version__", "?")
        return (
            f"xFormers {version} imports but its kernels do not run with torch {torch.__version__} on "
            f"{device} (it was probably built for another torch release): {type(e).__name__}: {e}"
        )
    return None


def describe_backends(device: str = "cpu") -> dict[str, dict[str, Any]]:
    """What each backend would do on ``device``: ``{name: {"available": bool, "detail": str}}``.

    ``detail`` says why a backend is not available, or what it runs. The ``auto`` entry's
    ``detail`` names the backend it resolves to.
    """
    import torch

    problem = xformers_problem(device)
    if torch.device(device).type == "cuda":
        kernels = [
            name
            for name, enabled in (
                ("flash", torch.backends.cuda.flash_sdp_enabled()),
                ("memory-efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
                ("cuDNN", torch.backends.cuda.cudnn_sdp_enabled()),
                ("math", torch.backends.cuda.math_sdp_enabled()),
            )
            if enabled
        ]
        sdpa_detail = f"torch {torch.__version__} SDPA; enabled CUDA kernels: {', '.join(kernels)}"
    else:
        sdpa_detail = f"torch {torch.__version__} SDPA (fused CPU kernel or math, chosen by torch)"
    return {
        "auto": {"available": True, "detail": resolve_backend("auto", device)},
        "xformers": {"available": problem is None, "detail": problem or "memory_efficient_attention ran"},
        "sdpa": {"available": True, "detail": sdpa_detail},
        "math": {"available": True, "detail": "explicit matmul + softmax (diffusers AttnProcessor)"},
    }


def resolve_backend(name: str, device: str = "cpu") -> str:
    """Map a requested backend (``auto`` included) to ``xformers``, ``sdpa`` or ``math``.

    Raises:
        AttentionBackendError: ``name`` is unknown, or is ``xformers`` and xFormers cannot run on
            ``device`` (the message says why and how to install it).
    """
    if name not in ATTENTION_BACKENDS:
        raise AttentionBackendError(
            f"unknown attention backend {name!r}; choose one of: {', '.join(ATTENTION_BACKENDS)}"
        )
    if name == "auto":
        # torch >= 2.3 is a dependency, so SDPA always exists: math is only used on request.
        return "xformers" if xformers_problem(device) is None else "sdpa"
    if name == "xformers" and (problem := xformers_problem(device)) is not None:
        raise AttentionBackendError(
            f"attention backend 'xformers' cannot run: {problem}. Install an xFormers build that "
            f"matches your torch ({XFORMERS_INSTALL_HINT} installs the PyPI build), or use "
            "--attention sdpa."
        )
    return name


def set_attention_backend(pipe: Any, name: str = "auto") -> str:
    """Switch every diffusers model in ``pipe`` to one attention backend.

    Args:
        pipe: a ``DiffusionPipeline`` (all its diffusers model components are switched) or a
            single diffusers model such as a ``UNet2DConditionModel``. Move it to its device
            first: xFormers is probed on ``pipe.device``.
        name: one of ``ATTENTION_BACKENDS``.

    Returns:
        The backend that actually runs, read back from the models: ``"xformers"``, ``"sdpa"`` or
        ``"math"``; several joined with ``+`` when layers differ (e.g. ``"math+sdpa"`` for a
        layer whose non-default scale SDPA cannot express).

    Raises:
        AttentionBackendError: see :func:`resolve_backend`, or a model uses attention processors
            this function does not replace (IP-Adapter, LoRA, ...).
    """
    backend = resolve_backend(name, str(pipe.device))
    models = _attention_models(pipe)
    # Check every model before switching any, so an error leaves the pipeline as it was.
    for model_name, model in models:
        kinds = {type(p).__name__ for p in model.attn_processors.values()}
        if not (_is_dispatch(model) or kinds <= _CLASSIC_PROCESSORS.keys()):
            raise AttentionBackendError(
                f"{model_name} uses attention processors {', '.join(sorted(kinds - _CLASSIC_PROCESSORS.keys()))}; "
                "switching them would drop their weights or behaviour, so set its attention yourself"
            )
    for _, model in models:
        if _is_dispatch(model):
            model.set_attention_backend(_DISPATCH_NAMES[backend])
        elif backend == "xformers":
            model.enable_xformers_memory_efficient_attention()
        elif backend == "sdpa":
            # diffusers' reset to its default: AttnProcessor2_0 wherever SDPA computes the same
            # thing (a layer with a custom scale keeps AttnProcessor).
            model.disable_xformers_memory_efficient_attention()
        else:
            from diffusers.models.attention_processor import AttnProcessor

            model.set_attn_processor(AttnProcessor())
    running = active_backend(pipe)
    if running != backend:
        logger.warning("attention backend %r requested, %r runs", name, running)
    logger.info("attention backend: %s (requested %s)", running, name)
    return running


def active_backend(pipe: Any) -> str:
    """The attention backend(s) the diffusers models in ``pipe`` run now, e.g. ``"sdpa"``.

    Unknown processors are reported by class name; several backends are joined with ``+``.
    """
    names = set()
    for _, model in _attention_models(pipe):
        for p in model.attn_processors.values():
            if hasattr(p, "_attention_backend"):
                # None means diffusers' process-wide default, which DIFFUSERS_ATTN_BACKEND sets.
                value = p._attention_backend or os.environ.get("DIFFUSERS_ATTN_BACKEND", "native")
                value = getattr(value, "value", value)  # an AttentionBackendName enum member
                names.add(_FROM_DISPATCH.get(value, value))
            else:
                names.add(_CLASSIC_PROCESSORS.get(type(p).__name__, type(p).__name__))
    return "+".join(sorted(names)) or "none"


def _is_dispatch(model: Any) -> bool:
    # Processors routed through diffusers' attention_dispatch carry the backend they call.
    return all(hasattr(p, "_attention_backend") for p in model.attn_processors.values())


def _attention_models(pipe: Any) -> list[tuple[str, Any]]:
    # A pipeline's components, or the model itself; only diffusers models expose attn_processors.
    components = pipe.components.items() if hasattr(pipe, "components") else [(type(pipe).__name__, pipe)]
    return [(name, c) for name, c in components if hasattr(c, "attn_processors")]
