"""Run the correction loop for one prompt or a file of them: what ``selfcorrect generate`` does.

:class:`Corrector` loads everything once (pipeline, VLM, critic, detector, the prompt parser)
and corrects prompt after prompt; :func:`run_batch` adds what a long job needs:

* a progress bar; a prompt that fails (the parser rejects it, the controller's output fails its
  schema, NaN latents) is reported in ``failures.jsonl`` and skipped, the rest finish;
* resumability: a prompt whose ``trace.json`` exists is skipped, so a rerun after an
  interruption only does what is left;
* data parallelism with accelerate: under ``accelerate launch --multi_gpu --num_processes N``
  (on GPUs, or on CPU cores, where processes join a gloo group) each process takes its share
  of the prompts (:meth:`accelerate.PartialState.split_between_processes`) and appends its
  preference pairs to its own file.

Output layout (``-o DIR``): ``DIR/NNNN-slug[-sSEED]/{image.png,rounds.png,trace.json}``,
``DIR/pairs/pairs-RANK.jsonl`` with ``DIR/pairs/images/``, ``DIR/failures-RANK.jsonl``.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfcorrect.diffusion.expected import Expected
from selfcorrect.diffusion.loop import Candidate, LoopConfig, correct, encode_image
from selfcorrect.diffusion.outputs import append_pairs, slug, write_outputs
from selfcorrect.errors import SelfcorrectError

# the critics of selfcorrect.critics that judge images
IMAGE_CRITICS = ("detection", "clip", "vqa", "llava_critic")


@dataclass
class Corrector:
    """Everything the loop needs, loaded once.

    Attributes:
        loaded: a :class:`~selfcorrect.diffusion.presets.LoadedPipeline`.
        expect: ``prompt -> Expected`` (the world grammar or a controller).
        detector, critic: see :func:`~selfcorrect.diffusion.loop.correct`.
        config: the loop's settings.
        names: what ran (critic, detector, parser), for the trace.
    """

    loaded: Any
    expect: Any
    detector: Any
    critic: Any
    config: LoopConfig
    names: dict
    planner: Any = None

    @classmethod
    def build(
        cls,
        loaded,
        *,
        critic: str = "detection",
        detector: str = "clip-proposals",
        vlm: str | None = None,
        controller: str | None = None,
        planner: str = "rules",
        config: LoopConfig | None = None,
        device: str = "cpu",
    ) -> Corrector:
        """Load the critic, detector and parser around an already loaded pipeline.

        Args:
            loaded: the pipeline (:func:`~selfcorrect.diffusion.presets.load_pipeline`).
            critic: a name of :data:`selfcorrect.critics.CRITICS` that judges images.
            detector: a name of :data:`selfcorrect.vision.detectors.DETECTORS`, or an OWLv2
                checkpoint.
            vlm: the VLM both critic and detector use (default: the world VLM); loaded once.
            controller: a chat model (hub id or folder) that parses free-text prompts; without
                it, prompts must follow the world grammar.
            planner: ``"rules"`` (the deterministic planner) or ``"controller"`` (the
                controller proposes each round's layout; needs ``controller``).
        """
        from selfcorrect.critics import CRITICS
        from selfcorrect.vision.detectors import load_detector
        from selfcorrect.vision.vlm import VLM, WORLD

        if planner not in ("rules", "controller"):
            raise SelfcorrectError(f"unknown planner {planner!r}; choose rules or controller")
        if planner == "controller" and not controller:
            raise SelfcorrectError("the controller planner needs a controller model (--controller MODEL)")
        if critic not in IMAGE_CRITICS:
            names = ", ".join(IMAGE_CRITICS)
            raise SelfcorrectError(f"critic {critic!r} cannot judge images; choose one of {names}")
        shared = None
        if critic in ("vqa", "llava_critic") or detector == "vlm":
            shared = VLM.from_pretrained(vlm or WORLD, device=device)
        built_detector = load_detector(detector, vlm=shared if detector == "vlm" else None, device=device)
        if controller:
            from selfcorrect.diffusion.controller import Controller, LayoutPlanner

            parser = Controller.from_pretrained(controller, device=device)
            planned_by = LayoutPlanner(parser) if planner == "controller" else None
            # the loop and a detection critic both ask for every prompt: a chat model answers once
            expect = functools.lru_cache(maxsize=1024)(parser.expected)
        else:
            from selfcorrect.world.grammar import parse_prompt

            def expect(prompt: str) -> Expected:
                return Expected.from_requirements(parse_prompt(prompt))

            planned_by = None

        # the loop's clip-proposals detector lends its CLIP to a CLIP-based critic: loaded once
        clip = _clip_of(built_detector)
        if critic == "clip":
            built_critic = CRITICS[critic](clip=clip, device=device)
        elif critic == "detection":
            # the loop's prompt parser; its own clip-proposals (on the same CLIP, but reporting
            # the weak detections that grade its findings), else the loop's detector, shared
            judge = detector if detector == "clip-proposals" else built_detector
            options = {"clip": clip} if clip else {}
            built_critic = CRITICS[critic](
                detector=judge, device=device, expected_of=expect, detector_options=options
            )
        else:  # the VQA critic judges the world VLM's relations from its boxes (build_vqa_critic)
            built_critic = CRITICS[critic](vlm=shared)

        names = {
            "critic": critic,
            "detector": detector,
            "vlm": str(vlm or WORLD),
            "parser": controller or "world grammar",
            "planner": planner,
        }
        return cls(loaded, expect, built_detector, built_critic, config or LoopConfig(), names, planned_by)

    def correct(self, prompt: str, seed: int = 0, image=None):
        """Run the loop for one prompt (on ``image``, a ``PIL.Image``, when given); returns the trace."""
        expected = self.expect(prompt)
        start = None
        if image is not None:
            start = Candidate(image.convert("RGB"), encode_image(self.loaded.pipeline, image), None)
        return correct(
            self.loaded.pipeline,
            prompt,
            expected=expected,
            detector=self.detector,
            critic=self.critic,
            config=self.config,
            seed=seed,
            start=start,
            planner=self.planner,
        )

    def record(self) -> dict:
        """What ran, for ``trace.json``."""
        loaded = self.loaded
        edit = self.config.edit
        return {
            "preset": loaded.preset,
            "source": loaded.source,
            "device": loaded.device,
            "dtype": loaded.dtype,
            "attention": loaded.attention,
            **self.names,
            "rounds_max": self.config.rounds,
            "edit": {
                "strength": edit.strength,
                "anchor_fraction": edit.anchor_fraction,
                "steps": edit.steps,
                "guidance": edit.guidance,
            },
        }


def _clip_of(detector) -> tuple | None:
    """The ``(model, preprocess, tokenizer)`` of a CLIP-labelling detector, else None."""
    if all(hasattr(detector, name) for name in ("model", "preprocess", "tokenizer")):
        return detector.model, detector.preprocess, detector.tokenizer
    return None


def job_folder(output: Path, index: int, prompt: str, seed: int, seeds: int) -> Path:
    """``output/NNNN-slug`` (``-sSEED`` added when each prompt runs with several seeds)."""
    return output / (f"{index:04d}-{slug(prompt)}" + (f"-s{seed}" if seeds > 1 else ""))


def run_batch(
    corrector: Corrector,
    prompts: list[str],
    output: Path,
    *,
    seeds: int = 1,
    first_seed: int = 0,
    pairs: bool = True,
    progress: bool = True,
) -> dict:
    """Correct every prompt (``seeds`` seeds each) into ``output``; see the module docstring.

    Returns:
        ``{"done", "skipped", "failed", "pairs"}``: counts over all processes.
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    # cpu=True lets processes started by `accelerate launch --multi_gpu` (torchrun) on a machine
    # without GPUs join one gloo group instead of each running alone.
    state = PartialState(cpu=str(corrector.loaded.device).startswith("cpu"))
    jobs = [
        (i, p, first_seed + s, job_folder(output, i, p, first_seed + s, seeds))
        for i, p in enumerate(prompts)
        for s in range(seeds)
    ]
    todo = [j for j in jobs if not (j[3] / "trace.json").is_file()]
    counts = {"done": 0, "skipped": len(jobs) - len(todo), "failed": 0, "pairs": 0}
    output.mkdir(parents=True, exist_ok=True)
    with state.split_between_processes(todo) as mine:
        bar = tqdm(mine, desc=f"correct[{state.process_index}]", disable=not progress)
        for index, prompt, seed, folder in bar:
            started = time.perf_counter()
            try:
                trace = corrector.correct(prompt, seed)
            except SelfcorrectError as e:  # a bad prompt or model output: report it, go on
                counts["failed"] += 1
                with open(output / f"failures-{state.process_index}.jsonl", "a", encoding="utf-8") as f:
                    f.write(
                        json.dumps({"index": index, "prompt": prompt, "seed": seed, "error": str(e)}) + "\n"
                    )
                bar.write(f"skipped prompt {index} ({prompt!r}): {e}")
                continue
            write_outputs(
                trace, folder, {**corrector.record(), "wall_seconds": round(time.perf_counter() - started, 3)}
            )
            if pairs:
                counts["pairs"] += append_pairs(
                    trace, output / "pairs", corrector.names["critic"], state.process_index
                )
            counts["done"] += 1
            bar.set_postfix(score=f"{trace.scores[0]:.2f}->{trace.final.score:.2f}")
    state.wait_for_everyone()
    if state.num_processes > 1:  # every process returns the totals
        from accelerate.utils import gather_object

        parts = gather_object([counts])
        counts = {k: sum(part[k] for part in parts) if k != "skipped" else counts[k] for k in counts}
    return counts
