"""Batched, seeded text-to-image generation that keeps the final latents and refuses NaN/inf.

The correction loop re-denoises from the latents it edits instead of starting over, so every
generated image carries its final latents. A non-finite latent at any denoising step stops the
batch with one clear error instead of saving a black image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from selfcorrect.errors import SelfcorrectError


class NonFiniteLatentsError(SelfcorrectError, FloatingPointError):
    """The sampler produced NaN or inf latents."""


@dataclass
class Generated:
    """One generated image.

    Attributes:
        prompt, seed: what was asked for; the same seed gives the same image on CPU.
        image: the ``PIL.Image``.
        latents: the final latents, ``(C, h, w)`` float32 on CPU (``(4, 16, 16)`` for the world).
        seconds: wall time of the batch it came from, divided by the batch size.
    """

    prompt: str
    seed: int
    image: Any
    latents: Any
    seconds: float


def generate(
    pipe,
    prompts: list[str],
    seeds: list[int],
    *,
    steps: int,
    guidance: float,
    size: int,
    batch_size: int = 16,
    progress: bool = False,
) -> list[Generated]:
    """Generate one image per (prompt, seed) pair.

    Args:
        pipe: a diffusers text-to-image pipeline (StableDiffusion / SDXL family).
        prompts, seeds: equal-length lists; pair ``i`` gives image ``i``.
        steps: denoising steps; guidance: classifier-free guidance scale; size: image side.
        batch_size: pairs per pipeline call.
        progress: show a progress bar over batches.

    Raises:
        NonFiniteLatentsError: NaN/inf latents at some step.
    """
    import torch
    from tqdm.auto import tqdm

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    pipe.set_progress_bar_config(disable=True)
    results: list[Generated] = []
    final: dict[str, Any] = {}  # the newest latents of the running batch

    def check_latents(pipeline, step, timestep, kwargs):
        latents = kwargs["latents"]
        if not torch.isfinite(latents).all():
            raise NonFiniteLatentsError(
                f"the sampler produced NaN/inf latents at step {step + 1} of {steps}; "
                "nothing was saved (try float32, fewer steps or a lower guidance scale)"
            )
        final["latents"] = latents
        return kwargs

    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress or len(starts) < 2):
        batch_prompts = list(prompts[start : start + batch_size])
        batch_seeds = list(seeds[start : start + batch_size])
        # One CPU generator per image: an image depends on its seed, not on its batch neighbours.
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in batch_seeds]
        final.clear()

        started = time.perf_counter()
        output = pipe(
            prompt=batch_prompts,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=size,
            width=size,
            generator=generators,
            callback_on_step_end=check_latents,
            callback_on_step_end_tensor_inputs=["latents"],
        )
        seconds = (time.perf_counter() - started) / len(batch_prompts)
        latents = final["latents"].detach().float().cpu()
        for i, image in enumerate(output.images):
            results.append(Generated(batch_prompts[i], batch_seeds[i], image, latents[i], seconds))
    return results
