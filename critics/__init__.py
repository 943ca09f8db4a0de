"""Critics: verdict types, one file per critic, and a plain dict registry (see DESIGN.md).

=============== ===================================== ========================================
name            class                                 needs
=============== ===================================== ========================================
``llava_critic`` :class:`~.llava_critic.LlavaCritic`   a VLM (default: the world VLM)
``vqa``          :class:`~.vqa.VQACritic`              a VLM (default: the world VLM)
``clip``         :class:`~.clip.ClipCritic`            an open_clip model (default: the world CLIP);
                                                      CLIPScore, pass/fail against the prompt's
                                                      one-edit variants
``lookback``     :class:`~.lookback.LookBackCritic`    a VLM (default: the world VLM); reasoning
                                                      chains (kind ``steps``), VISCO's LookBack
                                                      (for the world VLM its evidence is also
                                                      read by rule: :mod:`~.evidence`)
``tldr``         :class:`~.tldr.TldrCritic`            a VLM and a token head (default: the world
                                                      VLM and ``weights/tldr-head``); per-token
                                                      rewards (kind ``tokens``), TLDR
``detection``    :class:`~.detection.DetectionCritic`  a detector (default: ``clip-proposals``,
                                                      the world CLIP's); GenEval-style counts
                                                      and positions from boxes
=============== ===================================== ========================================

:data:`CRITICS` maps the CLI's names to builder functions that take keyword arguments; each loads
the world's model when none is given, only when called (importing this package loads nothing)::

    critic = CRITICS["vqa"]()                                  # the world VLM
    critic = CRITICS["llava_critic"](vlm="llava-hf/llava-onevision-qwen2-7b-ov-hf", device="cuda")
    critic = CRITICS["clip"](clip=(model, preprocess, tokenizer), threshold=0.3)
"""

from __future__ import annotations

from selfcorrect.critics.base import KINDS, AnswerCritic, ImageCritic, PairwiseCritic, StepCritic
from selfcorrect.critics.verdicts import Finding, ImageVerdict, PairwiseVerdict, StepVerdict, TokenVerdict


def _vlm(vlm, device: str):
    """A VLM object as given, or loaded from a name / folder (default: the world VLM)."""
    if vlm is None or isinstance(vlm, str) or hasattr(vlm, "__fspath__"):
        from selfcorrect.vision.vlm import VLM, WORLD

        return VLM.from_pretrained(WORLD if vlm is None else vlm, device=device)
    return vlm


def build_llava_critic(*, vlm=None, device: str = "cpu", **options):
    """:class:`~selfcorrect.critics.llava_critic.LlavaCritic`; ``vlm`` a VLM, a model id / folder,
    or None for the world VLM; other options go to the class (``mode=``, ``threshold=``, ...)."""
    from selfcorrect.critics.llava_critic import LlavaCritic

    return LlavaCritic(_vlm(vlm, device), **options)


def build_vqa_critic(*, vlm=None, device: str = "cpu", **options):
    """:class:`~selfcorrect.critics.vqa.VQACritic`; ``vlm`` as for :func:`build_llava_critic`.

    The world VLM finds objects but does not answer relation questions (its model card) and is
    less sure of sizes than of its boxes, so its relations and sizes are judged from its boxes
    (``relations="boxes"``, ``sizes="boxes"``) unless ``relations=`` / ``sizes=`` is given; any
    other VLM is asked them."""
    from selfcorrect.critics.vqa import VQACritic
    from selfcorrect.vision.vlm import WORLD

    vlm = _vlm(vlm, device)
    if getattr(vlm, "name", None) == WORLD:
        options.setdefault("relations", "boxes")
        options.setdefault("sizes", "boxes")
    return VQACritic(vlm, **options)


def build_clip_critic(*, clip=None, device: str = "cpu", **options):
    """:class:`~selfcorrect.critics.clip.ClipCritic`; ``clip`` a ``(model, preprocess, tokenizer)``
    triple, an open_clip folder, or None for the world CLIP."""
    from selfcorrect.critics.clip import ClipCritic
    from selfcorrect.vision.clip import load_world_clip

    if clip is None or isinstance(clip, str) or hasattr(clip, "__fspath__"):
        clip = load_world_clip(clip, device=device)
    model, preprocess, tokenizer = clip
    return ClipCritic(model, preprocess, tokenizer, **options)


def build_lookback_critic(*, vlm=None, device: str = "cpu", **options):
    """:class:`~selfcorrect.critics.lookback.LookBackCritic`; ``vlm`` as for :func:`build_llava_critic`;
    other options go to the class (``max_new_tokens=``, ``with_reference=``, ...).

    The world VLM's critique does not read LookBack's evidence (its model card), so for it the
    evidence is also read by rule (``check_evidence=True``) unless ``check_evidence=`` is given;
    any other VLM gets VISCO's LookBack as it is."""
    from selfcorrect.critics.lookback import LookBackCritic
    from selfcorrect.vision.vlm import WORLD

    vlm = _vlm(vlm, device)
    if getattr(vlm, "name", None) == WORLD:
        options.setdefault("check_evidence", True)
    return LookBackCritic(vlm, **options)


def build_tldr_critic(*, head=None, vlm=None, device: str = "cpu", **options):
    """:class:`~selfcorrect.critics.tldr.TldrCritic`: the head folder ``head`` (default: the shipped
    ``selfcorrect/weights/tldr-head``) on ``vlm`` (default: the backbone its config names)."""
    from selfcorrect.critics.tldr import TldrCritic

    backbone = None if vlm is None else _vlm(vlm, device)
    return TldrCritic.from_pretrained(head, vlm=backbone, device=device, **options)


def build_detection_critic(
    *, detector=None, device: str = "cpu", detector_options: dict | None = None, **options
):
    """:class:`~selfcorrect.critics.detection.DetectionCritic`; ``detector`` a detector object or a
    name of :data:`selfcorrect.vision.detectors.DETECTORS` (default ``"clip-proposals"``, loaded
    with ``detector_options``); other options go to the class (``min_score=``, ``expected_of=``)."""
    from selfcorrect.critics.detection import DetectionCritic
    from selfcorrect.vision.detectors import load_detector

    if detector is None or isinstance(detector, str):
        name = detector or "clip-proposals"
        # weak detections grade the findings (partial credit); min_score decides what counts
        weak = {"min_probability": 0.05} if name == "clip-proposals" else {}
        detector = load_detector(name, device=device, **{**weak, **(detector_options or {})})
    return DetectionCritic(detector, **options)


CRITICS = {
    "llava_critic": build_llava_critic,
    "vqa": build_vqa_critic,
    "clip": build_clip_critic,
    "lookback": build_lookback_critic,
    "tldr": build_tldr_critic,
    "detection": build_detection_critic,
}

__all__ = [
    "CRITICS", "KINDS", "AnswerCritic", "Finding", "ImageCritic", "ImageVerdict", "PairwiseCritic",
    "PairwiseVerdict", "StepCritic", "StepVerdict", "TokenVerdict",
    "build_clip_critic", "build_detection_critic", "build_llava_critic", "build_lookback_critic", "build_vqa_critic",
]  # fmt: skip
