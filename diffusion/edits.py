"""Latent edit operations: step 5 of the correction loop.

An edit works on the *final latents* of a generation (``(C, h, w)``, the scaled latents the
sampler ended with; :class:`~selfcorrect.diffusion.generate.Generated` keeps them), or on the
VAE encoding of an image given by the user. Four operations, SLD's vocabulary
(``../shared/notes/anchor-sld.md``), each written into the latent grid:

* **delete**: the object's box is filled with the background latent (the per-channel median of
  the latent pixels outside every detected object), so the re-denoising paints background there.
  SLD puts fresh noise into the inverted trajectory; with no inversion, a background-coloured
  start is what keeps the model from redrawing an object in the hole.
* **add**: the object is generated alone (``"a photo of a {phrase}"``, its own seed) with the same
  pipeline, its latent is cut out (the salient blob, see :func:`salient_patch`) and pasted centred
  on the target box; LMD+'s per-box generation, without GLIGEN.
* **move**: the object's own latent is cut from its box (the salient blob inside it), the old box
  is deleted as above and the blob pasted at the new centre. Unlike SLD the object is centred on
  its target box, and nothing is re-inverted.
* **recolour** (any attribute change): the old object is deleted and the object with its new
  attributes generated alone and pasted at the old box's centre: a masked regeneration with the
  new attribute.

Then :func:`redenoise` noises the edited latents to an intermediate timestep (``strength``) and
denoises the whole image with the full prompt, through the pipeline's own image-to-image variant
(:meth:`diffusers.AutoPipelineForImage2Image.from_pipe`: the loaded components are shared, nothing
is reloaded). For the first ``anchor_fraction`` of those steps the latents *outside* the edited
regions are overwritten after every step with the unedited latents noised to the same timestep,
so untouched objects stay where they were while the edited regions settle; after that the whole
image is denoised freely, which blends the seams.

Boxes are normalised ``(x0, y0, x1, y1)`` with y down, as everywhere in selfcorrect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from selfcorrect.diffusion.generate import NonFiniteLatentsError

Box = tuple[float, float, float, float]
KINDS = ("add", "delete", "move", "recolour")
OBJECT_PROMPT = "a photo of a {phrase}"  # the prompt an added object is generated alone with


@dataclass(frozen=True)
class EditOp:
    """One planned edit.

    Attributes:
        kind: one of :data:`KINDS`.
        phrase: the object the edit is about, as it should look afterwards (``"red circle"``);
            for delete, the object removed.
        target: where the object should be (add, move, recolour), else None.
        source: the box of the existing object it changes (delete, move, recolour), else None.
        reason: why the planner asked for it, in words.
    """

    kind: str
    phrase: str
    target: Box | None = None
    source: Box | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown edit {self.kind!r}; one of {', '.join(KINDS)}")
        if self.kind in ("add", "move", "recolour") and self.target is None:
            raise ValueError(f"a {self.kind} needs a target box")
        if self.kind in ("delete", "move", "recolour") and self.source is None:
            raise ValueError(f"a {self.kind} needs a source box")

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "phrase": self.phrase,
            "target": [round(v, 4) for v in self.target] if self.target else None,
            "source": [round(v, 4) for v in self.source] if self.source else None,
            "reason": self.reason,
        }


@dataclass
class EditConfig:
    """How edits are applied.

    Attributes:
        strength: how far the edited latents are noised before re-denoising (img2img strength:
            the share of the schedule that is run again).
        anchor_fraction: the share of those steps during which unedited regions are held to the
            original latents.
        steps, guidance: the sampler's steps (of a full schedule) and CFG scale.
        margin: latent pixels added around every edited region of the anchoring mask.
    """

    strength: float = 0.5
    anchor_fraction: float = 0.6
    steps: int = 25
    guidance: float = 3.0
    margin: int = 1


@dataclass
class Edited:
    """The result of :func:`apply_edits`.

    Attributes:
        latents: ``(C, h, w)`` float32 CPU, the re-denoised latents.
        image: the decoded ``PIL.Image``.
        mask: ``(h, w)`` bool, the latent pixels the edits changed (before re-denoising).
        seconds: wall time.
        objects: per add/recolour op, the box its generated object was found in.
    """

    latents: torch.Tensor
    image: Any
    mask: torch.Tensor
    seconds: float
    objects: list = field(default_factory=list)


def latent_window(box: Box, height: int, width: int) -> tuple[int, int, int, int]:
    """A normalised box as latent rows and columns ``(r0, r1, c0, c1)``, at least one pixel."""
    x0, y0, x1, y1 = box
    c0 = min(width - 1, max(0, int(x0 * width)))
    r0 = min(height - 1, max(0, int(y0 * height)))
    c1 = max(c0 + 1, min(width, round(x1 * width)))
    r1 = max(r0 + 1, min(height, round(y1 * height)))
    return r0, r1, c0, c1


def background_latent(latents: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
    """Per-channel median of the latent pixels outside ``boxes``: ``(C, h, w)`` -> ``(C,)``.

    With every pixel covered, the image border is used instead.
    """
    c, h, w = latents.shape
    outside = torch.ones(h, w, dtype=torch.bool)
    for box in boxes:
        r0, r1, c0, c1 = latent_window(box, h, w)
        outside[r0:r1, c0:c1] = False
    if not outside.any():
        outside[:] = False
        outside[0, :] = outside[-1, :] = outside[:, 0] = outside[:, -1] = True
    return latents[:, outside].median(dim=1).values


def salient_patch(
    latents: torch.Tensor, background: torch.Tensor, box: Box | None = None
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int, int]]:
    """Cut the most salient blob (an object) out of the latents.

    Saliency is the distance of each latent pixel from ``background``; the blob is the connected
    region, above half the largest distance, around the most salient pixel (inside ``box`` when
    given). A segmentation by latent contrast: enough to lift an object off the plain
    background a single-object generation has, and it needs no segmentation model.

    Args:
        latents: ``(C, h, w)``.
        background: ``(C,)``, see :func:`background_latent`.
        box: where to look; the whole grid when None.

    Returns:
        ``(patch, mask, window)``: ``patch`` ``(C, ph, pw)`` and ``mask`` ``(ph, pw)`` bool, the
        blob's bounding window of the grid, and that window as ``(r0, r1, c0, c1)``.
    """
    from scipy import ndimage

    c, h, w = latents.shape
    r0, r1, c0, c1 = latent_window(box, h, w) if box is not None else (0, h, 0, w)
    distance = (latents - background[:, None, None]).norm(dim=0)  # (h, w)
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[r0:r1, c0:c1] = True
    local = distance.masked_fill(~inside, 0.0)
    peak = int(local.argmax())
    strong = (local >= 0.5 * local.max()).numpy()
    labels, _ = ndimage.label(strong)
    blob = torch.from_numpy(labels == labels.flat[peak])
    rows, cols = blob.any(1).nonzero().flatten(), blob.any(0).nonzero().flatten()
    window = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    # Keep the blob's one-pixel rim too: latents of an object's edge are below half-saliency.
    rim = torch.from_numpy(ndimage.binary_dilation(blob.numpy())) & inside
    ra, rb, ca, cb = window
    ra, rb, ca, cb = max(0, ra - 1), min(h, rb + 1), max(0, ca - 1), min(w, cb + 1)
    return latents[:, ra:rb, ca:cb].clone(), rim[ra:rb, ca:cb].clone(), (ra, rb, ca, cb)


def salient_boxes(latents: torch.Tensor, known: list[Box] = (), share: float = 0.35) -> list[Box]:
    """Boxes of the salient blobs of ``(C, h, w)`` latents: places where *something* is.

    Class-agnostic object proposals from latent contrast (connected regions whose distance from
    the background latent exceeds ``share`` of the largest distance). The planner avoids them
    when it places new objects, so that an object the detector missed is not painted over.
    """
    from scipy import ndimage

    _, h, w = latents.shape
    distance = (latents - background_latent(latents, list(known))[:, None, None]).norm(dim=0)
    if float(distance.max()) <= 0:
        return []
    labels, n = ndimage.label((distance >= share * distance.max()).numpy())
    boxes = []
    for rows, cols in ndimage.find_objects(labels):
        boxes.append((cols.start / w, rows.start / h, cols.stop / w, rows.stop / h))
    return boxes


def paste(
    latents: torch.Tensor, patch: torch.Tensor, mask: torch.Tensor, centre: tuple[float, float]
) -> torch.Tensor:
    """Paste ``patch`` where ``mask`` is set, centred on ``centre`` (normalised x, y), in place.

    The patch is clipped at the grid's edges. Returns the ``(h, w)`` bool mask of pixels written.
    """
    _, h, w = latents.shape
    ph, pw = mask.shape
    top = min(max(0, round(centre[1] * h - ph / 2)), max(0, h - ph))
    left = min(max(0, round(centre[0] * w - pw / 2)), max(0, w - pw))
    written = torch.zeros(h, w, dtype=torch.bool)
    region = latents[:, top : top + ph, left : left + pw]
    m = mask[: region.shape[1], : region.shape[2]]
    region[:, m] = patch[:, : region.shape[1], : region.shape[2]][:, m]
    written[top : top + ph, left : left + pw] = m
    return written


def compose(
    latents: torch.Tensor,
    ops: list[EditOp],
    objects: dict[int, tuple[torch.Tensor, torch.Tensor]],
    known_boxes: list[Box],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write ``ops`` into a copy of ``latents``; no denoising.

    Deletions (and the old places of moved and recoloured objects) go first, then pastes,
    largest first, so that small objects are not covered by large ones.

    Args:
        latents: ``(C, h, w)``.
        ops: the edits.
        objects: for op index ``i`` of an add or recolour, ``(patch, mask)`` of the object
            generated for it (:func:`salient_patch` of its own generation).
        known_boxes: boxes of every detected object, to estimate the background.

    Returns:
        ``(edited, changed)``: ``(C, h, w)`` latents and the ``(h, w)`` bool mask of changed pixels.
    """
    edited = latents.clone()
    _, h, w = latents.shape
    background = background_latent(latents, known_boxes)
    changed = torch.zeros(h, w, dtype=torch.bool)
    pastes = []
    for i, op in enumerate(ops):
        if op.kind == "move":
            patch, mask, _ = salient_patch(latents, background, op.source)
            pastes.append((patch, mask, op.target))
        elif op.kind in ("add", "recolour"):
            patch, mask = objects[i]
            pastes.append((patch, mask, op.target))
        if op.source is not None:
            r0, r1, c0, c1 = latent_window(op.source, h, w)
            edited[:, r0:r1, c0:c1] = background[:, None, None]
            changed[r0:r1, c0:c1] = True
    for patch, mask, target in sorted(pastes, key=lambda p: -int(p[1].sum())):
        centre = ((target[0] + target[2]) / 2, (target[1] + target[3]) / 2)
        changed |= paste(edited, patch, mask, centre)
    return edited, changed


def redenoise(
    pipe,
    latents: torch.Tensor,
    original: torch.Tensor,
    changed: torch.Tensor,
    prompt: str,
    config: EditConfig,
    seed: int,
):
    """Re-denoise edited latents with the whole prompt, anchoring unchanged regions early on.

    Args:
        pipe: the text-to-image pipeline the latents came from.
        latents: ``(C, h, w)`` edited latents.
        original: ``(C, h, w)`` latents before the edit (the anchor).
        changed: ``(h, w)`` bool, the edited pixels; grown by ``config.margin``.
        prompt: the full prompt.
        config: strength, anchoring, steps, guidance.
        seed: the noise seed.

    Returns:
        ``(latents, image)``: ``(C, h, w)`` float32 CPU latents and the ``PIL.Image``.

    Raises:
        NonFiniteLatentsError: NaN/inf latents at some step.
    """
    import torch.nn.functional as F
    from diffusers import AutoPipelineForImage2Image

    img2img = AutoPipelineForImage2Image.from_pipe(pipe)  # shares the loaded modules
    img2img.set_progress_bar_config(disable=True)
    device, dtype = pipe.device, pipe.unet.dtype
    free = changed.float()[None, None]
    if config.margin:
        k = 2 * config.margin + 1
        free = F.max_pool2d(free, k, stride=1, padding=config.margin)
    free = free[0].to(device, dtype)  # (1, h, w): 1 where the latents may change
    anchor = original.to(device, dtype)[None]
    noise = torch.randn(anchor.shape, generator=torch.Generator("cpu").manual_seed(seed + 1))
    noise = noise.to(device, dtype)
    final: dict[str, torch.Tensor] = {}

    def anchored(pipeline, step, timestep, kwargs):
        current = kwargs["latents"]
        if not torch.isfinite(current).all():
            raise NonFiniteLatentsError(
                f"the sampler produced NaN/inf latents at step {step + 1} while re-denoising an edit"
            )
        timesteps = pipeline.scheduler.timesteps  # the full schedule; img2img runs its tail
        index = int((timesteps == timestep).nonzero()[0, 0])
        anchored_steps = round(config.anchor_fraction * pipeline.num_timesteps)
        if step < anchored_steps and index + 1 < len(timesteps):
            noisy = pipeline.scheduler.add_noise(anchor, noise, timesteps[index + 1 : index + 2])
            current = free * current + (1 - free) * noisy
            kwargs["latents"] = current
        final["latents"] = current
        return kwargs

    output = img2img(
        prompt=prompt,
        image=latents[None].to(device, dtype),
        strength=config.strength,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        generator=torch.Generator("cpu").manual_seed(seed),
        callback_on_step_end=anchored,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    return final["latents"][0].detach().float().cpu(), output.images[0]


def apply_edits(
    pipe,
    latents: torch.Tensor,
    prompt: str,
    ops: list[EditOp],
    known_boxes: list[Box],
    config: EditConfig,
    seed: int,
) -> Edited:
    """Apply ``ops`` to ``latents`` and re-denoise: the whole of step 5.

    Objects to add or recolour are generated alone in one batch (seeds ``seed + 100 + i``) and
    cut out of their own latents with :func:`salient_patch`.

    Args:
        pipe: the text-to-image pipeline.
        latents: ``(C, h, w)``, the current image's latents.
        prompt: the full prompt.
        ops: the planned edits (at least one).
        known_boxes: boxes of all detected objects (for the background estimate).
        config: :class:`EditConfig`.
        seed: this round's seed.
    """
    import time

    from selfcorrect.diffusion.generate import generate

    started = time.perf_counter()
    wanted = [i for i, op in enumerate(ops) if op.kind in ("add", "recolour")]
    objects: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    found = []
    if wanted:
        size = pipe.vae_scale_factor * latents.shape[-1]
        alone = generate(
            pipe,
            [OBJECT_PROMPT.format(phrase=ops[i].phrase) for i in wanted],
            [seed + 100 + i for i in wanted],
            steps=config.steps,
            guidance=config.guidance,
            size=size,
        )
        for i, result in zip(wanted, alone):
            own = result.latents
            patch, mask, window = salient_patch(own, background_latent(own, []))
            objects[i] = (patch, mask)
            h, w = own.shape[-2:]
            found.append({"op": i, "window": [window[2] / w, window[0] / h, window[3] / w, window[1] / h]})
    edited, changed = compose(latents, ops, objects, known_boxes)
    new_latents, image = redenoise(pipe, edited, latents, changed, prompt, config, seed)
    return Edited(new_latents, image, changed, time.perf_counter() - started, found)
