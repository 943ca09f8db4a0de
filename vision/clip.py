"""open_clip models: save and load the world CLIP, and score images against texts.

The embedded world's CLIP is an ordinary open_clip :class:`open_clip.CLIP` (a small ViT image tower
for 64x64 images, a text transformer) built from a custom model config registered with
``open_clip.add_model_config``, using open_clip's standard CLIP BPE tokenizer
(``open_clip.get_tokenizer``, a ``SimpleTokenizer`` at the config's context length). It is trained
by :mod:`selfcorrect.train.world_clip` and stored in open_clip's own folder layout, the one its
Hugging Face Hub loader reads::

    world-clip/
        open_clip_config.json        {"model_cfg": {...}, "preprocess_cfg": {...}}
        open_clip_model.safetensors  the weights, fp16
        world-clip.json              the bare model config, for open_clip.add_model_config
        selfcorrect_training.json    how it was trained

so open_clip loads it with no selfcorrect code, in either of two ways::

    import open_clip

    # 1. the folder (what load_world_clip does)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")

    # 2. register the config, then load the weights file by model name
    open_clip.add_model_config(f"{folder}/world-clip.json")  # the name is the file's stem
    model, _, preprocess = open_clip.create_model_and_transforms(
        "world-clip", pretrained=f"{folder}/open_clip_model.safetensors"
    )
    tokenizer = open_clip.get_tokenizer("world-clip")

:func:`encode_images`, :func:`encode_texts` and :func:`clip_scores` work on any open_clip model
(the world's, or a real one such as ViT-H-14): they take the model, its preprocess and its
tokenizer, and nothing in them knows about the world.

Example::

    model, preprocess, tokenizer = load_world_clip()
    sims = clip_scores(model, preprocess, tokenizer, [image], ["a red circle", "a blue circle"])
    best = sims.argmax(dim=1)                                         # (1,)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

import selfcorrect
from selfcorrect.vision.images import load_image
from selfcorrect.vision.vlm import PICKLE_SUFFIXES, ModelFormatError, ModelNotFoundError, VLMInputError

WORLD_CLIP_NAME = "world-clip"  # the open_clip model name its config registers
WORLD_CLIP_DIR = Path(selfcorrect.__file__).resolve().parent / "weights" / WORLD_CLIP_NAME
HUB_CONFIG = "open_clip_config.json"  # open_clip's names for a model folder's files
HUB_WEIGHTS = "open_clip_model.safetensors"
RECORD = "selfcorrect_training.json"
DEFAULT_BATCH_SIZE = 256
TRAIN_COMMAND = "python -m selfcorrect.train.world_clip --profile cpu --output-dir runs/world-clip"


class LoadedClip(NamedTuple):
    """What :func:`load_world_clip` returns; unpacks as ``model, preprocess, tokenizer``."""

    model: torch.nn.Module  # an open_clip CLIP in eval mode
    preprocess: object  # PIL image -> (3, H, W) float tensor (open_clip's eval transform)
    tokenizer: object  # list[str] -> (N, context_length) long tensor


def save_world_clip(
    model: torch.nn.Module, model_cfg: dict, folder: str | Path, record: dict | None = None
) -> Path:
    """Save an open_clip model in the folder layout of the module docstring, atomically.

    Weights are stored as fp16 safetensors; the folder appears complete or not at all (it is
    written beside ``folder`` and renamed into place, replacing an older one).

    Args:
        model: an open_clip CLIP (any dtype, any device).
        model_cfg: the config it was created from.
        folder: where to save it.
        record: written as ``selfcorrect_training.json`` if given.

    Returns:
        ``folder`` as a Path.
    """
    import open_clip
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.parent / f".tmp-{folder.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {
        k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    save_file(state, tmp / HUB_WEIGHTS, metadata={"format": "pt"})
    preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
    hub = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (tmp / HUB_CONFIG).write_text(json.dumps(hub, indent=2))
    (tmp / f"{WORLD_CLIP_NAME}.json").write_text(json.dumps(model_cfg, indent=2))
    if record is not None:
        (tmp / RECORD).write_text(json.dumps(record, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def load_world_clip(path: str | Path | None = None, device: str | torch.device = "cpu") -> LoadedClip:
    """Load the world CLIP (or any open_clip model folder) through open_clip's ``local-dir:`` loader.

    Args:
        path: a folder saved by :func:`save_world_clip` (or any open_clip hub-layout folder);
            default the shipped weights, ``selfcorrect/weights/world-clip``.
        device: where to put the model.

    Returns:
        ``(model, preprocess, tokenizer)``: the model in eval mode (fp32), open_clip's eval
        transform, and open_clip's tokenizer for the model's config.

    Raises:
        ModelNotFoundError: the folder or its config is missing (the message says how to train it).
        ModelFormatError: no safetensors weights (pickles are never loaded), or a config or weights
            file that cannot be read or does not fit.
    """
    import open_clip

    folder = Path(path).expanduser() if path is not None else WORLD_CLIP_DIR
    if not (folder / HUB_CONFIG).is_file():
        where = "the world CLIP is not built yet" if path is None else "no open_clip model folder"
        raise ModelNotFoundError(
            f"{where}: {folder / HUB_CONFIG} is missing. Train it with `{TRAIN_COMMAND}` and copy "
            f"runs/world-clip/model to {WORLD_CLIP_DIR} (or pass that folder as path)"
        )
    names = [p.name for p in folder.iterdir()]
    if not any(n.endswith(".safetensors") for n in names):
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        found = f"only pickle weights ({', '.join(pickles)})" if pickles else "no weights"
        raise ModelFormatError(f"{folder} has {found}; selfcorrect loads safetensors only")
    from safetensors import SafetensorError

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", device=device)
    except (RuntimeError, ValueError, KeyError, SafetensorError) as e:
        # RuntimeError: load_state_dict(strict=True) found weights of another architecture;
        # ValueError, KeyError: an unreadable or incomplete config; SafetensorError: a truncated
        # or corrupt weights file.
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelFormatError(f"cannot load the open_clip model in {folder}: {first}") from None
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    return LoadedClip(model.eval(), preprocess, tokenizer)


def encode_images(model, preprocess, images, batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
    """Unit-norm image embeddings, each image encoded once.

    Args:
        model: an open_clip model.
        preprocess: its eval transform (PIL image -> ``(3, H, W)``).
        images: PIL images or paths (``B`` of them), or an already preprocessed ``(B, 3, H, W)``
            tensor.
        batch_size: images per forward pass.

    Returns:
        ``(B, D)`` float32 on the CPU.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise VLMInputError(f"an image tensor must be (B, 3, H, W), got shape {tuple(images.shape)}")
        pixels = images
    else:
        pixels = torch.stack([preprocess(load_image(im)) for im in images]) if len(images) else None
    if pixels is None or len(pixels) == 0:
        raise VLMInputError("no images to encode")
    device, dtype = _device_dtype(model)
    out = []
    with torch.inference_mode():
        for batch in pixels.split(batch_size):
            out.append(model.encode_image(batch.to(device, dtype), normalize=True).float().cpu())
    return torch.cat(out)


def encode_texts(
    model, tokenizer, texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE
) -> torch.Tensor:
    """Unit-norm text embeddings, each distinct text encoded once.

    Args:
        model: an open_clip model.
        tokenizer: its tokenizer (``list[str] -> (N, context_length)``).
        texts: ``T`` strings; repeats are encoded once.
        batch_size: texts per forward pass.

    Returns:
        ``(T, D)`` float32 on the CPU, in the order of ``texts``.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise VLMInputError("texts must be a list of strings")
    if not texts:
        raise VLMInputError("no texts to encode")
    unique = list(dict.fromkeys(texts))
    device, _ = _device_dtype(model)
    out = []
    with torch.inference_mode():
        for start in range(0, len(unique), batch_size):
            ids = tokenizer(unique[start : start + batch_size]).to(device)
            out.append(model.encode_text(ids, normalize=True).float().cpu())
    features = torch.cat(out)  # (U, D)
    index = {t: i for i, t in enumerate(unique)}
    return features[torch.tensor([index[t] for t in texts])]


def clip_scores(
    model, preprocess, tokenizer, images, texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE
) -> torch.Tensor:
    """Cosine similarity of every image with every text.

    Args:
        model, preprocess, tokenizer: an open_clip model with its eval transform and tokenizer
            (e.g. from :func:`load_world_clip`).
        images: ``B`` PIL images or paths, or a preprocessed ``(B, 3, H, W)`` tensor.
        texts: ``T`` strings.
        batch_size: images or texts per forward pass.

    Returns:
        ``(B, T)`` float32 on the CPU, in ``[-1, 1]``: ``sims[b, t]`` is how well text ``t`` fits
        image ``b``. Multiply by ``model.logit_scale.exp()`` and softmax over ``t`` for CLIP's
        probabilities over the texts; CLIPScore is ``2.5 * sims.clamp(min=0)``.
    """
    image_features = encode_images(model, preprocess, images, batch_size)  # (B, D)
    text_features = encode_texts(model, tokenizer, texts, batch_size)  # (T, D)
    return image_features @ text_features.T


def _device_dtype(model) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype
