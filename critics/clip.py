"""CLIPScore (Hessel et al. 2021) as a critic: one embedding similarity per (image, prompt).

``CLIPScore = 2.5 * max(cos(image, text), 0)``, in ``[0, 2.5]``; the reference implementation
(``jmhessel/clipscore``) uses ViT-B/32 and prefixes the text with ``"A photo depicts"``, and with
real CLIPs matched pairs land around 0.7-0.8 (cosine about 0.3). The verdict's score is CLIPScore
normalised to ``[0, 1]``, i.e. ``max(cos, 0)`` itself. CLIP reads a bag of words and misses
composition (counts, attribute binding, positions), so it has no per-requirement findings: use it
as a cheap baseline, a filter, or a tie-breaker, not as the correction loop's judge.

Whether a score passes depends on the model (the world CLIP and ViT-H-14 live on different
scales), so ``threshold`` has no default: without one, ``passed`` is None.

:meth:`ClipCritic.compare` needs no position-bias control (no order is shown to the model); its
confidence is CLIP's own probability of the winning image, the softmax over the two images of
``logit_scale * cos``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from selfcorrect.critics.verdicts import ImageVerdict, PairwiseVerdict

CLIPSCORE_WEIGHT = 2.5  # CLIPScore's w


def clipscore(cosine: torch.Tensor | float) -> torch.Tensor:
    """``2.5 * max(cos, 0)``: CLIPScore from cosine similarities, in ``[0, 2.5]``."""
    return CLIPSCORE_WEIGHT * torch.as_tensor(cosine).clamp(min=0)


class ClipCritic:
    """Score images against prompts with an open_clip model.

    Args:
        model, preprocess, tokenizer: an open_clip model with its eval transform and tokenizer;
            all None loads the world CLIP (:func:`selfcorrect.vision.clip.load_world_clip`).
        threshold: the image passes when its normalised score (``max(cos, 0)``) is at least this;
            None (default) leaves ``passed`` None, because the scale depends on the model.
        prefix: text put before every prompt (``"A photo depicts "`` in the reference CLIPScore).
        batch_size: images or texts per forward pass.
    """

    kinds = frozenset({"image", "pairwise"})
    name = "clip"

    def __init__(
        self,
        model=None,
        preprocess=None,
        tokenizer=None,
        *,
        threshold: float | None = None,
        prefix: str = "",
        batch_size: int = 64,
    ):
        if model is None and preprocess is None and tokenizer is None:
            from selfcorrect.vision.clip import load_world_clip

            model, preprocess, tokenizer = load_world_clip()
        if model is None or preprocess is None or tokenizer is None:
            raise ValueError("give the model, its preprocess and its tokenizer together (or none of them)")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.threshold = threshold
        self.prefix = prefix
        self.batch_size = batch_size

    def cosines(self, images: Sequence, prompts: Sequence[str]) -> torch.Tensor:
        """``(B,)`` cosine similarity of each image with its own prompt (each encoded once)."""
        from selfcorrect.vision.clip import encode_images, encode_texts

        if len(images) != len(prompts) or not prompts:
            raise ValueError(f"give one prompt per image; got {len(images)} images, {len(prompts)} prompts")
        image_features = encode_images(self.model, self.preprocess, list(images), self.batch_size)
        text_features = encode_texts(
            self.model, self.tokenizer, [self.prefix + p for p in prompts], self.batch_size
        )
        return (image_features * text_features).sum(-1)

    def critique(self, image, prompt: str) -> ImageVerdict:
        """CLIPScore of ``image`` against ``prompt``, normalised to [0, 1]."""
        return self.critique_many([image], [prompt])[0]

    def critique_many(self, images: Sequence, prompts: Sequence[str]) -> list[ImageVerdict]:
        """:meth:`critique` for B (image, prompt) pairs."""
        verdicts = []
        for cos in self.cosines(images, prompts).tolist():
            score = float(clipscore(cos)) / CLIPSCORE_WEIGHT
            verdicts.append(
                ImageVerdict(
                    score=score,
                    passed=None if self.threshold is None else score >= self.threshold,
                    explanation=f"CLIPScore {CLIPSCORE_WEIGHT * score:.3f} (cosine {cos:.3f})",
                    critic=self.name,
                    details={"cosine": cos, "clipscore": CLIPSCORE_WEIGHT * score},
                )
            )
        return verdicts

    def compare(self, image_a, image_b, prompt: str) -> PairwiseVerdict:
        """The image with the higher cosine wins; confidence is CLIP's softmax over the two."""
        cos = self.cosines([image_a, image_b], [prompt, prompt])
        scale = float(self.model.logit_scale.detach().exp()) if hasattr(self.model, "logit_scale") else 100.0
        p_first, p_second = torch.softmax(scale * cos, dim=0).tolist()
        if cos[0] == cos[1]:
            preference, confidence = "tie", 1.0
        else:
            preference, confidence = ("first", p_first) if cos[0] > cos[1] else ("second", p_second)
        return PairwiseVerdict(
            preference=preference,
            confidence=float(confidence),
            both_orders_agree=True,  # the model sees each image alone: there is no order
            probabilities={"first": p_first, "second": p_second, "tie": 0.0},
            explanation=f"cosine {float(cos[0]):.3f} vs {float(cos[1]):.3f}",
            critic=self.name,
        )
