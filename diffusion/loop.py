"""The closed correction loop: generate, then detect, critique, plan, edit and verify, round by round.

:func:`correct` is the whole loop as one numbered function (DESIGN.md). It fixes what
``../shared/notes/anchor-sld.md`` lists as SLD's weaknesses:

* the critic **sees the image** (any :class:`~selfcorrect.critics.base.ImageCritic`), and its
  failed findings gate the plan: requirements it passes are not edited;
* every edit is **re-checked and rolled back** when the critic's score does not improve, so the
  returned image is never scored worse than the first one (keep-best); a rolled-back round is
  retried with new seeds in the next round;
* the pipeline is loaded once and **edits reuse the generation's latents** (no inversion, nothing
  reloaded per call); NaN/inf latents stop with a clear error;
* the plan is computed from typed data (:mod:`selfcorrect.diffusion.plan`), not diffed names;
  a chat model may propose the layout instead (``planner=LayoutPlanner(controller)``), and its
  answer is validated like the prompt parse;
* rounds are bounded (``rounds``) and the trace records everything: per round the critique,
  detections, plan, edits, scores, seeds and timings.

Only the critic judges here; the world's exam grader never runs in the loop (it grades the outcome
in ``selfcorrect eval loop``, from ``selfcorrect.world``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from selfcorrect.diffusion.edits import EditConfig, apply_edits, salient_boxes
from selfcorrect.diffusion.expected import Expected
from selfcorrect.diffusion.plan import plan, queries


@dataclass
class LoopConfig:
    """Settings of :func:`correct`.

    Attributes:
        rounds: the most correction rounds (each: detect, critique, plan, edit, verify).
        edit: how edits are applied (strength, anchoring, steps, guidance).
        gate_on_findings: plan only for requirements the critic found failing, when its verdict
            has one finding per requirement; otherwise plan from the detections alone.
        size: the first image's side in pixels (default: the pipeline's native resolution).
        min_gain: an edit is kept only if it raises the critic's score by more than this; a
            margin above 0 keeps a noisy critic from accepting edits it cannot tell apart.
    """

    rounds: int = 3
    edit: EditConfig = field(default_factory=EditConfig)
    gate_on_findings: bool = True
    size: int | None = None
    min_gain: float = 0.0


@dataclass
class Candidate:
    """An image the loop has seen: its latents and the critic's verdict on it."""

    image: Any
    latents: Any  # (C, h, w) float32
    verdict: Any  # an ImageVerdict

    @property
    def score(self) -> float:
        """The critic's score; an unparsed verdict ranks below every real score."""
        return self.verdict.score if self.verdict.score is not None else -1.0


@dataclass
class Trace:
    """Everything :func:`correct` did, JSON-ready through :meth:`to_dict`.

    Attributes:
        prompt, seed: what was asked.
        expected: step 1's result.
        images: the first image, then each round's edited image (accepted or not).
        scores: the critic's score of each of ``images``.
        rounds: one dict per round (see :func:`correct`).
        best: index into ``images`` of the image returned (the last accepted one).
        stopped: why the loop ended: ``"passed"``, ``"nothing to edit"`` or ``"rounds"``.
        final: the best :class:`Candidate`.
        seconds: wall time of the whole loop, first generation included.
    """

    prompt: str
    seed: int
    expected: Expected
    images: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    rounds: list = field(default_factory=list)
    best: int = 0
    stopped: str = ""
    final: Candidate | None = None
    seconds: float = 0.0
    first_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "expected": self.expected.to_dict(),
            "scores": [round(s, 4) if s is not None else None for s in self.scores],
            "best": self.best,
            "stopped": self.stopped,
            "rounds": self.rounds,
            "seconds": round(self.seconds, 3),
            "first_generation_seconds": round(self.first_seconds, 3),
        }


def correct(
    pipe,
    prompt: str,
    *,
    expected: Expected,
    detector,
    critic,
    config: LoopConfig | None = None,
    seed: int = 0,
    start: Candidate | None = None,
    planner=None,
) -> Trace:
    """Generate an image for ``prompt`` (or take ``start``) and correct it.

    Args:
        pipe: a diffusers text-to-image pipeline (loaded once by the caller).
        prompt: the prompt.
        expected: step 1, what the image should show (from the world grammar or a controller).
        detector: ``detect(image, phrases) -> {phrase: [detection with box, score]}``.
        critic: an image critic, ``critique(image, prompt) -> ImageVerdict``.
        config: :class:`LoopConfig`.
        seed: the first generation's seed; round ``r`` edits with ``seed + 1000 * r``.
        start: correct this image instead of generating one (latents from
            :func:`encode_image`); its verdict may be None.
        planner: step 4, ``planner(expected, detections, failing, avoid) -> [EditOp]``; default
            the deterministic :func:`~selfcorrect.diffusion.plan.plan` (or e.g. a
            :class:`~selfcorrect.diffusion.controller.LayoutPlanner`).

    Returns:
        A :class:`Trace`; ``trace.final`` is the best image.

    Raises:
        NonFiniteLatentsError: the sampler produced NaN/inf latents.
    """
    from selfcorrect.diffusion.generate import generate

    config = config or LoopConfig()
    edit = config.edit
    started = time.perf_counter()
    trace = Trace(prompt, seed, expected)
    if start is None:
        size = config.size or pipe.vae_scale_factor * pipe.unet.config.sample_size
        (first,) = generate(pipe, [prompt], [seed], steps=edit.steps, guidance=edit.guidance, size=size)
        start = Candidate(first.image, first.latents, None)
    if start.verdict is None:
        start.verdict = critic.critique(start.image, prompt)
    trace.first_seconds = time.perf_counter() - started
    current = start
    trace.images.append(current.image)
    trace.scores.append(current.verdict.score)
    trace.stopped = "rounds"
    phrases = queries(expected)
    n_requirements = len(expected.objects) + len(expected.relations)

    for r in range(1, config.rounds + 1):
        timings: dict[str, float] = {}
        # "input": index into trace.images of the image this round starts from (and judges).
        record: dict[str, Any] = {"round": r, "input": trace.best, "critique": current.verdict.to_dict()}

        # 1. Expected: given (``expected``), the same every round.
        # 2. Critique the current image: the verdict of the image this round starts from
        #    (made when it was accepted, or for the first image above).
        if current.verdict.passed:
            trace.stopped = "passed"
            trace.rounds.append(record)
            break

        # 3. Detect the expected objects (and their bare nouns, to find wrong attributes).
        t = time.perf_counter()
        detections = detector.detect(current.image, phrases)
        timings["detect"] = time.perf_counter() - t
        record["detections"] = {
            p: [{"box": [round(v, 4) for v in d.box], "score": round(d.score, 4)} for d in ds]
            for p, ds in detections.items()
        }

        # 4. Plan edits for what the critic failed (or, with no per-requirement findings, for all).
        failing = None
        findings = current.verdict.findings
        if config.gate_on_findings and len(findings) == n_requirements:
            failing = {i for i, f in enumerate(findings) if not f.passed}
        known = [d.box for ds in detections.values() for d in ds]
        ops = (planner or plan)(expected, detections, failing, avoid=salient_boxes(current.latents, known))
        record["plan"] = [op.to_dict() for op in ops]
        if not ops:
            trace.stopped = "nothing to edit"
            record["timings"] = _rounded(timings)
            trace.rounds.append(record)
            break

        # 5. Edit the latents and re-denoise, anchoring what the plan leaves alone.
        round_seed = seed + 1000 * r
        t = time.perf_counter()
        edited = apply_edits(pipe, current.latents, prompt, ops, known, edit, round_seed)
        timings["edit"] = time.perf_counter() - t
        record["seed"] = round_seed
        record["edits"] = {"changed_latent_pixels": int(edited.mask.sum()), "objects": edited.objects}

        # 6. Verify: re-score; keep the edit only if the critic's score went up (by min_gain).
        t = time.perf_counter()
        candidate = Candidate(edited.image, edited.latents, critic.critique(edited.image, prompt))
        timings["verify"] = time.perf_counter() - t
        trace.images.append(candidate.image)
        record["image"] = len(trace.images) - 1  # the edited image's index
        trace.scores.append(candidate.verdict.score)
        accepted = candidate.score > current.score + config.min_gain
        record.update(
            score_before=current.verdict.score,
            score_after=candidate.verdict.score,
            accepted=accepted,
            verdict_after=candidate.verdict.to_dict(),
            timings=_rounded(timings),
        )
        trace.rounds.append(record)
        if accepted:
            current = candidate
            trace.best = record["image"]
    else:
        if current.verdict.passed:
            trace.stopped = "passed"

    trace.final = current
    trace.seconds = time.perf_counter() - started
    return trace


def encode_image(pipe, image) -> Any:
    """The latents of a given image: ``PIL.Image`` -> ``(C, h, w)`` float32 (VAE mean, scaled).

    The image is resized to the pipeline's resolution first. No inversion: the loop's
    re-denoising starts from a noised copy of these latents (as image-to-image does).
    """
    import torch

    size = pipe.vae_scale_factor * pipe.unet.config.sample_size
    pixels = pipe.image_processor.preprocess(image.convert("RGB").resize((size, size)))
    with torch.no_grad():
        posterior = pipe.vae.encode(pixels.to(pipe.device, pipe.vae.dtype)).latent_dist
    return (posterior.mode() * pipe.vae.config.scaling_factor)[0].float().cpu()


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in timings.items()}
