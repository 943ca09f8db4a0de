"""Open-vocabulary detectors: find the boxes of text phrases in an image, one protocol for all.

The SLD-style correction loop (DESIGN.md) starts each round by asking where the objects the prompt
names are: ``detect(image, ["red circle", "blue square"])`` gives, for every phrase, its boxes
with scores, best first. Two detectors implement the protocol:

============== ================================= ==============================================
name           class                             boxes come from
============== ================================= ==============================================
``vlm``        :class:`VLMGroundingDetector`     a VLM asked ``Find every {phrase}. Answer with
               (the default)                     bounding boxes.`` (the world VLM by default)
``owlv2``      :class:`Owlv2Detector`            an OWLv2 checkpoint (SLD's detector), e.g.
                                                 ``google/owlv2-base-patch16-ensemble``
============== ================================= ==============================================

**Why a VLM is the default.** The embedded world ships a VLM trained to ground phrases, and no
detector; SLD's own pipeline uses OWLv2 for real images. Both go through the same protocol, so the
loop never knows which it has (and never special-cases the world).

**Scores.** OWLv2's scores are its per-phrase sigmoid class probabilities. A VLM's generated
answer carries no calibrated confidence (the text says where, not how sure), so every box from
:class:`VLMGroundingDetector` scores 1.0; callers that need a confidence should ask the VLM's
yes/no log-probabilities (:mod:`selfcorrect.critics.vqa`) instead of reading it from the boxes.

**Per phrase, not per box.** Each phrase is scored on its own: a box can be reported for
``"circle"`` and for ``"red circle"`` alike. transformers' ``post_process_object_detection``
keeps only each box's best phrase, which would hide the ``"circle"`` box whenever ``"red
circle"`` scores higher; pass ``exclusive=True`` to :class:`Owlv2Detector` for that behaviour.

**Coordinates.** Boxes are normalised ``(x0, y0, x1, y1)`` in ``[0, 1]``, y down: the convention
of :data:`selfcorrect.critics.verdicts.Box`. OWLv2's processor pads every image at the bottom or
right to a square before resizing it, so its boxes are fractions of the *padded square's* side:
they are scaled by ``max(width, height)``, clipped to the real image and only then divided by the
image's own width and height (:func:`square_to_image_boxes`); dividing by width and height
directly would squash every box of a non-square image.

Example::

    detector = load_detector("vlm")                      # the world VLM
    found = detector.detect(image, ["red circle", "blue square"])
    found["red circle"]        # [Detection(phrase='red circle', box=(0.1, 0.2, 0.3, 0.4), score=1.0)]

    detector = load_detector("owlv2", device="cuda")     # google/owlv2-base-patch16-ensemble
    many = detector.detect_many([image_a, image_b], [["dog"], ["cat", "ball"]])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from selfcorrect.critics import prompts as P
from selfcorrect.critics.parsing import parse_boxes
from selfcorrect.errors import SelfcorrectError
from selfcorrect.vision.images import load_image

DEFAULT_OWLV2 = "google/owlv2-base-patch16-ensemble"
# OWLv2's class embeddings were trained on prompt ensembles of this kind ("a photo of a {}");
# SLD writes "image of a {}". Either works; this one is CLIP's most common template.
OWLV2_QUERY = "a photo of a {phrase}"
DUPLICATE_IOU = 0.9  # a VLM box overlapping an earlier one of its phrase this much is a repeat
VLM_MAX_NEW_TOKENS = 64  # five boxes "[12, 34, 56, 78]" are 45 tokens for the world VLM


class DetectorInputError(SelfcorrectError, ValueError):
    """Unusable input to a detector: no or blank phrases, mismatched lengths, bad settings."""


@dataclass(frozen=True)
class Detection:
    """One box found for one phrase.

    Attributes:
        phrase: the phrase it was found for, as the caller gave it.
        box: normalised ``(x0, y0, x1, y1)`` in ``[0, 1]``, y down, ``x0 < x1`` and ``y0 < y1``
            (as :data:`selfcorrect.critics.verdicts.Box`).
        score: the detector's confidence in ``[0, 1]`` (always 1.0 from a VLM, see the module
            docstring).
    """

    phrase: str
    box: tuple[float, float, float, float]
    score: float

    def __post_init__(self) -> None:
        if len(self.box) != 4:
            raise ValueError(f"a box has four coordinates, got {self.box}")
        x0, y0, x1, y1 = self.box
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ValueError(
                f"a box must be normalised (x0, y0, x1, y1) with x0 < x1, y0 < y1, got {self.box}"
            )
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"a detection's score must be in [0, 1], got {self.score}")

    def to_dict(self) -> dict:
        return {"phrase": self.phrase, "box": list(self.box), "score": self.score}


@runtime_checkable
class Detector(Protocol):
    """Finds text phrases in images.

    Images are anything :func:`selfcorrect.vision.images.load_image` reads (a PIL image, a path,
    bytes, a uint8 array).
    """

    name: str

    def detect(self, image, phrases: Sequence[str]) -> dict[str, list[Detection]]:
        """The boxes of each phrase in ``image``: ``{phrase: [Detection, ...]}`` in the order of
        ``phrases``, each list best first and possibly empty."""
        ...

    def detect_many(
        self, images: Sequence, phrases_per_image: Sequence[Sequence[str]]
    ) -> list[dict[str, list[Detection]]]:
        """:meth:`detect` for B images, batched; ``phrases_per_image`` is one list of phrases per
        image, or one list shared by all."""
        ...


# -------------------------------------------------------------------------------- VLM grounding


class VLMGroundingDetector:
    """Boxes from a VLM that answers :data:`selfcorrect.critics.prompts.GROUND`.

    Every (image, phrase) becomes one greedy chat turn, ``Find every {phrase}. Answer with bounding
    boxes.``; all of them go to one batched :meth:`VLM.chat <selfcorrect.vision.vlm.VLM.chat>` call,
    in which each image is encoded once. The answer is read with
    :func:`selfcorrect.critics.parsing.parse_boxes`: ``[x0, y0, x1, y1]`` in percent of the image
    side, any number of them; ``None`` (:data:`~selfcorrect.critics.prompts.NO_BOXES`) or text
    without a box gives no detections. A box that overlaps an earlier box of the same answer with
    IoU > :data:`DUPLICATE_IOU` is a repeat and is dropped. Boxes keep the model's order.

    An answer that is neither ``None`` nor holds a valid box (free text, an inverted box) also
    gives no detections, but is not silently taken for "nothing there": after each call,
    :attr:`last_unparsed` lists those answers as ``(image index, phrase, text)``.

    Every box scores 1.0: generated text carries no calibrated confidence.

    The prompt format is the world VLM's; a VLM that grounds in another dialect (Qwen2-VL's
    ``<|box_start|>`` boxes in 0-1000) needs its own ``prompt`` and ``box_scale``.

    Args:
        vlm: a :class:`selfcorrect.vision.vlm.VLM`, or anything with its ``chat`` method.
        max_new_tokens: the longest answer generated (64 holds five boxes for the world VLM; an
            answer cut short loses only its incomplete box).
        batch_size: conversations per ``generate`` call.
        prompt: the question, with a ``{phrase}`` field.
        box_scale: what a box coordinate is out of (100: percent).
    """

    name = "vlm"

    def __init__(
        self,
        vlm,
        *,
        max_new_tokens: int = VLM_MAX_NEW_TOKENS,
        batch_size: int = 16,
        prompt: str = P.GROUND,
        box_scale: float = 100.0,
    ):
        if max_new_tokens < 1:
            raise DetectorInputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if batch_size < 1:
            raise DetectorInputError(f"batch_size must be at least 1, got {batch_size}")
        if "{phrase}" not in prompt:
            raise DetectorInputError(f"the prompt needs a {{phrase}} field, got {prompt!r}")
        if box_scale <= 0:
            raise DetectorInputError(f"box_scale must be positive, got {box_scale}")
        self.vlm = vlm
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.prompt = prompt
        self.box_scale = box_scale
        self.last_unparsed: list[tuple[int, str, str]] = []

    def __repr__(self) -> str:
        return f"VLMGroundingDetector({self.vlm!r})"

    def detect(self, image, phrases: Sequence[str]) -> dict[str, list[Detection]]:
        """See :meth:`Detector.detect`."""
        return self.detect_many([image], [_phrase_list(phrases)])[0]

    def detect_many(
        self, images: Sequence, phrases_per_image: Sequence[Sequence[str]]
    ) -> list[dict[str, list[Detection]]]:
        """See :meth:`Detector.detect_many`; one ``chat`` call for every phrase of every image."""
        loaded, phrase_lists = _check_inputs(images, phrases_per_image)
        asks = [(n, phrase) for n, phrases in enumerate(phrase_lists) for phrase in phrases]
        results: list[dict[str, list[Detection]]] = [{p: [] for p in phrases} for phrases in phrase_lists]
        self.last_unparsed = []
        if not asks:
            return results
        answers = self.vlm.chat(
            [loaded[n] for n, _ in asks],
            [self.prompt.format(phrase=phrase) for _, phrase in asks],
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
        )
        if len(answers) != len(asks):
            raise SelfcorrectError(f"the VLM gave {len(answers)} answers to {len(asks)} questions")
        for (n, phrase), answer in zip(asks, answers):
            boxes = [] if answer.strip() == P.NO_BOXES else parse_boxes(answer, scale=self.box_scale)
            if not boxes and answer.strip() != P.NO_BOXES:
                self.last_unparsed.append((n, phrase, answer))
            results[n][phrase] = [Detection(phrase, box, 1.0) for box in _drop_repeats(boxes)]
        return results


def _drop_repeats(boxes: list[tuple], iou: float = DUPLICATE_IOU) -> list[tuple]:
    """``boxes`` in order, without those overlapping an earlier kept box with IoU > ``iou``."""
    kept: list[tuple] = []
    for box in boxes:
        if all(box_iou(box, other) <= iou for other in kept):
            kept.append(box)
    return kept


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when both are empty)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ------------------------------------------------------------------------------------- OWLv2


class Owlv2Detector:
    """OWLv2 (Minderer et al. 2023), the open-vocabulary detector SLD uses, through transformers.

    Each phrase is asked as ``"a photo of a {phrase}"`` (:data:`OWLV2_QUERY`). For every image
    the model scores each of its patch boxes against each phrase (sigmoid of the class logit); a
    box is kept for a phrase when that score is above ``threshold``, and then class-aware NMS
    (:func:`torchvision.ops.batched_nms`, IoU above ``nms_iou``, in pixels) removes lower-scoring
    overlapping boxes of the same phrase. Boxes that fall entirely into the processor's padding
    are dropped; the others are clipped to the image.

    Args:
        model: an ``Owlv2ForObjectDetection``.
        processor: its ``Owlv2Processor``.
        threshold: a box is kept for a phrase when its score is strictly above this (above 1:
            nothing is kept).
        nms_iou: boxes of one phrase overlapping a better one by more than this are dropped
            (1.0: no NMS).
        device: where inputs go; ``None`` (the default) uses the model's device, and the model is
            moved when another is given.
        batch_size: images per forward pass.
        query: the text query template, with a ``{phrase}`` field.
        exclusive: report each box only under its best phrase (transformers'
            ``post_process_object_detection`` behaviour) instead of under every phrase.
    """

    name = "owlv2"

    def __init__(
        self,
        model,
        processor,
        *,
        threshold: float = 0.2,
        nms_iou: float = 0.3,
        device=None,
        batch_size: int = 8,
        query: str = OWLV2_QUERY,
        exclusive: bool = False,
    ):
        if not 0.0 <= nms_iou <= 1.0:
            raise DetectorInputError(f"nms_iou must be in [0, 1], got {nms_iou}")
        if batch_size < 1:
            raise DetectorInputError(f"batch_size must be at least 1, got {batch_size}")
        if "{phrase}" not in query:
            raise DetectorInputError(f"the query needs a {{phrase}} field, got {query!r}")
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.processor = processor
        self.threshold = float(threshold)
        self.nms_iou = float(nms_iou)
        self.batch_size = batch_size
        self.query = query
        self.exclusive = exclusive

    def __repr__(self) -> str:
        return f"Owlv2Detector({getattr(self.model, 'name_or_path', '')!r}, threshold={self.threshold})"

    @classmethod
    def from_pretrained(
        cls, source: str | os.PathLike = DEFAULT_OWLV2, *, dtype=None, device="cpu", **options
    ) -> Owlv2Detector:
        """Load an OWLv2 checkpoint by Hugging Face id or local folder (safetensors only).

        Args:
            source: a hub id (``"google/owlv2-base-patch16-ensemble"``,
                ``"google/owlv2-large-patch14-ensemble"``) or a folder saved with ``save_pretrained``.
            dtype: ``None`` (float32 on CPU, bfloat16 / float16 on CUDA), ``"auto"``, a name such as
                ``"float16"`` or a ``torch.dtype``.
            device: where the model runs.
            **options: passed to the class (``threshold=``, ``nms_iou=``, ...).

        Raises:
            ModelNotFoundError: the files are not here (not downloaded while offline, missing
                folder, unknown id); the message says what to download.
            ModelFormatError: the files are there but are not an OWLv2 checkpoint with safetensors
                weights and a processor.
        """
        import transformers

        from selfcorrect.vision.vlm import (
            ModelFormatError,
            first_line,
            load_checkpoint_config,
            load_weights,
            locate_checkpoint,
            resolve_device,
            resolve_dtype,
        )

        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        location = locate_checkpoint(source)
        config = load_checkpoint_config(location, source, False)
        if config.model_type != "owlv2":
            raise ModelFormatError(f"{source} is a {config.model_type!r} checkpoint, not an OWLv2 detector")
        model = load_weights(
            transformers.Owlv2ForObjectDetection, location, source, config, dtype=torch_dtype, device=device
        )
        try:
            processor = transformers.Owlv2Processor.from_pretrained(location)
        except (OSError, ValueError, TypeError) as e:
            raise ModelFormatError(f"{source}: cannot load its processor: {first_line(e)}") from None
        return cls(model, processor, **options)

    def detect(self, image, phrases: Sequence[str]) -> dict[str, list[Detection]]:
        """See :meth:`Detector.detect`."""
        return self.detect_many([image], [_phrase_list(phrases)])[0]

    def detect_many(
        self, images: Sequence, phrases_per_image: Sequence[Sequence[str]]
    ) -> list[dict[str, list[Detection]]]:
        """See :meth:`Detector.detect_many`; ``batch_size`` images per forward pass."""
        import torch

        loaded, phrase_lists = _check_inputs(images, phrases_per_image)
        results: list[dict[str, list[Detection]]] = [{p: [] for p in phrases} for phrases in phrase_lists]
        todo = [n for n, phrases in enumerate(phrase_lists) if phrases]
        self._check_lengths({p for n in todo for p in phrase_lists[n]})
        device = self.model.device
        with torch.inference_mode():
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                queries = [[self.query.format(phrase=p) for p in phrase_lists[n]] for n in chunk]
                inputs = self.processor(text=queries, images=[loaded[n] for n in chunk], return_tensors="pt")
                inputs = {
                    k: v.to(device, dtype=self.model.dtype if v.is_floating_point() else None)
                    for k, v in inputs.items()
                }
                outputs = self.model(**inputs)
                padded = getattr(self.processor.image_processor, "do_pad", True) is not False
                for i, n in enumerate(chunk):
                    count = len(phrase_lists[n])
                    results[n] = self._select(
                        outputs.logits[i, :, :count].float().sigmoid().cpu(),
                        outputs.pred_boxes[i].float().cpu(),
                        phrase_lists[n],
                        loaded[n].size,
                        padded,
                    )
        return results

    def _check_lengths(self, phrases: set[str]) -> None:
        """Refuse queries longer than the text tower's context (OWLv2: 16 tokens) rather than cut them."""
        limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        if limit is None:
            return
        for phrase in sorted(phrases):
            tokens = len(self.processor.tokenizer(self.query.format(phrase=phrase))["input_ids"])
            if tokens > limit:
                raise DetectorInputError(
                    f"phrase {phrase!r} is too long for {self.name}: its query is {tokens} tokens, more than "
                    f"the text tower's {limit}; shorten it"
                )

    def _select(self, scores, boxes, phrases: list[str], size: tuple[int, int], padded: bool) -> dict:
        """Threshold, clip and NMS one image's predictions.

        Args:
            scores: ``(P, Q)`` per-patch, per-phrase probabilities.
            boxes: ``(P, 4)`` predicted ``(cx, cy, w, h)`` as fractions of the model's input
                (the padded square when ``padded``).
            phrases: the Q phrases.
            size: the image's ``(width, height)`` in pixels.
        """
        import torch

        width, height = size
        corners = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], dim=-1)
        if padded:
            pixels = square_to_image_boxes(corners, width, height) * torch.tensor([width, height] * 2)
        else:  # stretched to the model's input: each axis by its own side
            pixels = corners.clamp(0.0, 1.0) * torch.tensor([width, height] * 2)
        if self.exclusive:
            best = scores.argmax(dim=-1, keepdim=True)
            scores = torch.zeros_like(scores).scatter(-1, best, scores.gather(-1, best))
        nonempty = (pixels[:, 2] > pixels[:, 0]) & (pixels[:, 3] > pixels[:, 1])
        patch, phrase = torch.nonzero((scores > self.threshold) & nonempty[:, None], as_tuple=True)
        found = {p: [] for p in phrases}
        if len(patch) == 0:
            return found
        kept = class_aware_nms(pixels[patch], scores[patch, phrase], phrase, self.nms_iou)
        scale = torch.tensor([width, height] * 2, dtype=pixels.dtype)
        for k in kept.tolist():
            box = tuple(float(v) for v in (pixels[patch[k]] / scale).clamp(0.0, 1.0))
            if box[0] < box[2] and box[1] < box[3]:
                name = phrases[int(phrase[k])]
                found[name].append(Detection(name, box, float(scores[patch[k], phrase[k]])))
        return found


def square_to_image_boxes(boxes, width: int, height: int):
    """Boxes relative to OWLv2's padded square, normalised to the real image and clipped to it.

    The processor pads a ``width x height`` image at the right or bottom to a square of side
    ``max(width, height)``; a box given as fractions of that square's side is scaled by the side,
    clipped to the image, and divided by the image's own width and height.

    Args:
        boxes: ``(N, 4)`` float tensor, ``(x0, y0, x1, y1)`` as fractions of the padded square.
        width, height: the image's size in pixels.

    Returns:
        ``(N, 4)``: normalised ``(x0, y0, x1, y1)`` in ``[0, 1]`` of the image. A box entirely in the
        padding comes back empty (``x0 == x1`` or ``y0 == y1``).
    """
    import torch

    side = float(max(width, height))
    pixels = boxes * side
    limits = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(pixels.clamp(min=0.0), limits) / limits


def class_aware_nms(boxes, scores, labels, iou: float):
    """Indices of the boxes kept by per-label NMS, best score first.

    Args:
        boxes: ``(N, 4)`` ``(x0, y0, x1, y1)``; scores: ``(N,)``; labels: ``(N,)`` int.
        iou: a box overlapping a better one of its label by more than this is dropped.
    """
    try:
        from torchvision.ops import batched_nms
    except ImportError as e:  # pragma: no cover - torchvision is a dependency
        raise SelfcorrectError(
            f"the OWLv2 detector needs torchvision (pip install torchvision): {e}"
        ) from None
    return batched_nms(boxes.float(), scores.float(), labels, iou)


# ---------------------------------------------------------------------------------- inputs


def _phrase_list(phrases) -> Sequence[str]:
    if isinstance(phrases, str):
        raise DetectorInputError(f"pass a list of phrases (a single phrase goes in a list: [{phrases!r}])")
    return phrases


def _check_inputs(images, phrases_per_image) -> tuple[list, list[list[str]]]:
    """Load the images and give each its list of distinct, non-blank phrases."""
    if not isinstance(images, (list, tuple)):
        raise DetectorInputError("pass a list of images (a single image goes in a list)")
    if isinstance(phrases_per_image, str) or not isinstance(phrases_per_image, (list, tuple)):
        raise DetectorInputError("pass a list of phrases per image, or one list of phrases for all")
    if phrases_per_image and all(isinstance(p, str) for p in phrases_per_image):
        phrases_per_image = [phrases_per_image] * len(images)
    if len(phrases_per_image) != len(images):
        raise DetectorInputError(f"got {len(phrases_per_image)} lists of phrases for {len(images)} images")
    phrase_lists = []
    for n, phrases in enumerate(phrases_per_image):
        if isinstance(phrases, str) or not isinstance(phrases, (list, tuple)):
            raise DetectorInputError(f"image {n}: phrases must be a list of strings, got {phrases!r}")
        for phrase in phrases:
            if not isinstance(phrase, str) or not phrase.strip():
                raise DetectorInputError(f"image {n}: a phrase must be a non-blank string, got {phrase!r}")
        phrase_lists.append(list(dict.fromkeys(phrases)))  # each phrase asked once, order kept
    loaded = []
    for n, image in enumerate(images):
        try:
            loaded.append(load_image(image))
        except SelfcorrectError as e:
            raise type(e)(f"image {n}: {e}") from None
    return loaded, phrase_lists


# ---------------------------------------------------------------------------------- registry


# ------------------------------------------------------------------------ proposals + CLIP


class ProposalClipDetector:
    """Class-agnostic proposals on a plain background, labelled zero-shot by a CLIP.

    The R-CNN recipe with CLIP as the classifier: (1) *proposals* are the connected regions whose
    colour stands out from the background (the median colour of the image border) by more than
    ``contrast`` (0-255) and ``share`` of the strongest contrast; (2) each is cut out, centred on
    a background-coloured square ``pad`` times its size (so that it looks like a one-object
    image) and (3) classified over ``labels`` (``"a photo of a {label}"``, a softmax at the
    model's own ``logit_scale``, so the probabilities are as calibrated as CLIP's training made
    them). A phrase's probability is the summed probability of the labels that hold every word
    of the phrase the label vocabulary knows (``"circle"``: every ``"{colour} circle"``;
    ``"red circle"``: just that one); the region is a detection of the phrase, scored by that
    probability, when it is at least ``min_probability`` and the box has every size the phrase
    names (``sizes``; without them size words are ignored). With ``min_probability`` above 0.5
    a region is at most one shape.

    It suits images with a plain background (the embedded world, product shots, diagrams); on
    cluttered photographs use :class:`Owlv2Detector`. On 108 objects of world
    text-to-image images it finds 98% and labels 85% right (shape 86%;
    ``python benchmarks/clip_proposals.py``).

    Args:
        model, preprocess, tokenizer: an open_clip model (:func:`selfcorrect.vision.clip.load_world_clip`).
        labels: the closed label set, e.g. every ``"{colour} {shape}"``.
        contrast, share: the proposal thresholds; min_pixels: smaller regions are noise.
        pad: the cut-out's side relative to the object's larger side.
        sizes: size words and the range ``(low, high)`` of a box's longer side, as a fraction
            of the image's side, that each allows (``{"small": (0, 0.23), "large": (0.23, 1)}``).
        min_probability: the least probability of a phrase that makes a region its detection.
    """

    name = "clip-proposals"

    def __init__(
        self,
        model,
        preprocess,
        tokenizer,
        labels: Sequence[str],
        *,
        contrast: float = 40.0,
        share: float = 0.3,
        min_pixels: int = 9,
        pad: float = 2.5,
        sizes: dict[str, tuple[float, float]] | None = None,
        min_probability: float = 0.5,
    ):
        if not labels:
            raise DetectorInputError("the label set is empty")
        self.sizes = {str(k).lower(): (float(lo), float(hi)) for k, (lo, hi) in (sizes or {}).items()}
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.labels = [str(label).strip().lower() for label in labels]
        self.vocabulary = {w for label in self.labels for w in label.split()}
        self.contrast, self.share, self.min_pixels, self.pad = contrast, share, min_pixels, pad
        self.min_probability = min_probability
        self._text = None

    def __repr__(self) -> str:
        return f"ProposalClipDetector({len(self.labels)} labels)"

    def proposals(self, image) -> tuple[list[tuple[int, int, int, int]], tuple[int, int, int]]:
        """Pixel boxes ``(x0, y0, x1, y1)`` of the regions that stand out, and the background colour."""
        import numpy as np
        from scipy import ndimage

        pixels = np.asarray(image.convert("RGB")).astype(np.float32)  # (H, W, 3)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        background = np.median(border, axis=0)
        distance = np.abs(pixels - background).max(axis=-1)  # (H, W)
        mask = distance > max(self.contrast, self.share * float(distance.max()))
        labels, _ = ndimage.label(mask)
        boxes = []
        for rows, cols in ndimage.find_objects(labels):
            if (rows.stop - rows.start) * (cols.stop - cols.start) >= self.min_pixels:
                boxes.append((cols.start, rows.start, cols.stop, rows.stop))
        return boxes, tuple(int(v) for v in background)

    def detect(self, image, phrases: Sequence[str]) -> dict[str, list[Detection]]:
        return self.detect_many([image], [phrases])[0]

    def detect_many(self, images, phrases_per_image) -> list[dict[str, list[Detection]]]:
        import torch
        from PIL import Image

        from selfcorrect.vision.clip import encode_images, encode_texts

        images, phrases_per_image = _check_inputs(images, phrases_per_image)
        if self._text is None:
            self._text = encode_texts(self.model, self.tokenizer, [f"a photo of a {x}" for x in self.labels])
        results = []
        for image, phrases in zip(images, phrases_per_image):
            boxes, background = self.proposals(image)
            crops = []
            for x0, y0, x1, y1 in boxes:
                side = int(max(x1 - x0, y1 - y0) * self.pad) + 2
                canvas = Image.new("RGB", (side, side), background)
                canvas.paste(image.crop((x0, y0, x1, y1)), ((side - (x1 - x0)) // 2, (side - (y1 - y0)) // 2))
                crops.append(canvas)
            found: dict[str, list[Detection]] = {p: [] for p in phrases}
            if crops:
                similarity = encode_images(self.model, self.preprocess, crops) @ self._text.T  # (N, L)
                probs = torch.softmax(self._scale() * similarity.float(), dim=-1)  # (N, L)
                width, height = image.size
                for phrase in phrases:
                    asked = phrase.lower().split()
                    known = {w for w in asked if w in self.vocabulary}
                    if not known:
                        continue
                    naming = torch.tensor([known <= set(label.split()) for label in self.labels])  # (L,)
                    for box, p in zip(boxes, probs[:, naming].sum(-1).tolist()):
                        norm = (box[0] / width, box[1] / height, box[2] / width, box[3] / height)
                        side = max(norm[2] - norm[0], norm[3] - norm[1])
                        sized = all(lo <= side < hi for w, (lo, hi) in self.sizes.items() if w in asked)
                        if p >= self.min_probability and sized:
                            found[phrase].append(Detection(phrase, norm, round(min(1.0, p), 6)))
            results.append({p: sorted(d, key=lambda x: -x.score) for p, d in found.items()})
        return results

    def _scale(self) -> float:
        """The softmax temperature: the model's learned ``logit_scale`` (100, CLIP's cap, without one)."""
        scale = getattr(self.model, "logit_scale", None)
        return 100.0 if scale is None else float(scale.detach().exp())


def build_vlm_detector(*, vlm=None, device: str = "cpu", **options) -> VLMGroundingDetector:
    """:class:`VLMGroundingDetector`; ``vlm`` a VLM object, a model id / folder, or None for the
    world VLM; other options go to the class (``max_new_tokens=``, ``batch_size=``, ...)."""
    if vlm is None or isinstance(vlm, str) or hasattr(vlm, "__fspath__"):
        from selfcorrect.vision.vlm import VLM, WORLD

        vlm = VLM.from_pretrained(WORLD if vlm is None else vlm, device=device)
    return VLMGroundingDetector(vlm, **options)


def build_owlv2_detector(
    *, source: str | os.PathLike = DEFAULT_OWLV2, device: str = "cpu", dtype=None, **options
) -> Owlv2Detector:
    """:class:`Owlv2Detector` from a hub id or folder (default :data:`DEFAULT_OWLV2`); other options
    go to the class (``threshold=``, ``nms_iou=``, ...)."""
    return Owlv2Detector.from_pretrained(source, dtype=dtype, device=device, **options)


def build_clip_proposal_detector(
    *, clip=None, labels=None, device: str = "cpu", **options
) -> ProposalClipDetector:
    """:class:`ProposalClipDetector`; ``clip`` a ``(model, preprocess, tokenizer)`` triple, an
    open_clip folder or None for the world CLIP; ``labels`` default to the world's every
    ``"{colour} {shape}"``, and then ``sizes`` to the world's small and large, split where
    :func:`selfcorrect.world.scene.size_of_box` splits them."""
    from selfcorrect.vision.clip import load_world_clip

    if clip is None or isinstance(clip, str) or hasattr(clip, "__fspath__"):
        clip = load_world_clip(clip, device=device)
    if labels is None:
        from selfcorrect.world.scene import COLOURS, SHAPES, SIZE_THRESHOLD

        labels = [f"{c} {s}" for c in COLOURS for s in SHAPES]
        options.setdefault("sizes", {"small": (0.0, SIZE_THRESHOLD), "large": (SIZE_THRESHOLD, float("inf"))})
    return ProposalClipDetector(*clip, labels, **options)


DETECTORS = {
    "vlm": build_vlm_detector,
    "owlv2": build_owlv2_detector,
    "clip-proposals": build_clip_proposal_detector,
}


def load_detector(name: str = "vlm", *, vlm=None, device: str = "cpu", **options) -> Detector:
    """A detector by short name, or an OWLv2 checkpoint by hub id or folder.

    Args:
        name: ``"vlm"`` (:class:`VLMGroundingDetector`), ``"owlv2"`` (:data:`DEFAULT_OWLV2`),
            ``"clip-proposals"`` (:class:`ProposalClipDetector`, the world CLIP), or a hub id (``owner/name``) or local folder of an OWLv2 checkpoint.
        vlm: for ``"vlm"``: a VLM object, a VLM id / folder, or None for the world VLM.
        device: where the model runs.
        **options: passed to the detector class (``threshold=``, ``max_new_tokens=``, ...).

    Raises:
        SelfcorrectError: ``name`` is neither a known detector nor a checkpoint; or (as
            ``ModelNotFoundError`` / ``ModelFormatError``) the model cannot be loaded.
    """
    if name == "vlm":
        return build_vlm_detector(vlm=vlm, device=device, **options)
    if vlm is not None:
        raise DetectorInputError(f"vlm= is only used by the 'vlm' detector, not by {name!r}")
    if name in DETECTORS:
        return DETECTORS[name](device=device, **options)
    text = str(name)
    if "/" in text or os.sep in text or text.startswith((".", "~")) or os.path.exists(text):
        return build_owlv2_detector(source=name, device=device, **options)
    raise SelfcorrectError(
        f"unknown detector {text!r}; choose one of {', '.join(DETECTORS)}, or pass the hub id or "
        "folder of an OWLv2 checkpoint"
    )
