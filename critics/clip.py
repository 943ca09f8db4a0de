"""CLIPScore (Hessel et al. 2021) as a critic: one embedding similarity per (image, prompt).

``CLIPScore = 2.5 * max(cos(image, text), 0)``, in ``[0, 2.5]``; the reference implementation
(``jmhessel/clipscore``) uses ViT-B/32 and prefixes the text with ``"A photo depicts"``, and with
real CLIPs matched pairs land around 0.7-0.8 (cosine about 0.3). The verdict's score is CLIPScore
normalised to ``[0, 1]``, i.e. ``max(cos, 0)`` itself. A plain CLIP reads a bag of words and
misses composition (counts, attribute binding, positions); the world CLIP was trained against
hard negatives to see them (``benchmarks/clip_hard_negatives.py``).

Whether a score passes depends on the model (the world CLIP and ViT-H-14 live on different
scales) and on the prompt (a long prompt scores lower than a short one on the same image), so
``threshold`` has no default. Without one, pass/fail is **contrastive**: the prompt's one-edit
variants (:func:`~selfcorrect.world.negatives.one_edit_variants`: another colour, shape, size,
count or relation, or two objects' attributes or a relation's sides swapped) are scored on the
same image, and the image fails when some variant beats the prompt by more than ``tolerance``
(cosine). Each variant edits known requirements of the prompt
(:func:`~selfcorrect.world.negatives.edited_requirements`), so there is one finding per
requirement: it fails when a variant that edits it wins ("two blue circles" beats "two red
circles": the circles look blue), and names that variant. ``details["variants"]`` holds them all.
This is the hard-negative test the world CLIP is measured on, asked about the prompt. A prompt
outside the world grammar has no variants and no findings: then ``passed`` is None.

:meth:`ClipCritic.compare` needs no position-bias control (no order is shown to the model); its
confidence is CLIP's own probability of the winning image, the softmax over the two images of
``logit_scale * cos``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from selfcorrect.critics.verdicts import Finding, ImageVerdict, PairwiseVerdict
from selfcorrect.errors import PromptError
from selfcorrect.world.grammar import parse_prompt
from selfcorrect.world.negatives import HardNegative, edited_requirements, one_edit_variants

CLIPSCORE_WEIGHT = 2.5  # CLIPScore's w
DEFAULT_TOLERANCE = 0.05  # see ClipCritic
TEXT_CACHE = 20_000


def clipscore(cosine: torch.Tensor | float) -> torch.Tensor:
    """``2.5 * max(cos, 0)``: CLIPScore from cosine similarities, in ``[0, 2.5]``."""
    return CLIPSCORE_WEIGHT * torch.as_tensor(cosine).clamp(min=0)


class ClipCritic:
    """Score images against prompts with an open_clip model.

    Args:
        model, preprocess, tokenizer: an open_clip model with its eval transform and tokenizer;
            all None loads the world CLIP (:func:`selfcorrect.vision.clip.load_world_clip`).
        threshold: the image passes when its normalised score (``max(cos, 0)``) is at least this;
            None (default): contrastive pass/fail (see the module docstring), or None when
            ``contrast`` is off or the prompt has no variants.
        contrast: score each prompt's one-edit variants too (pass/fail without a threshold, and
            what looks wrong); off, a prompt costs one text encoding instead of ~10-30.
        tolerance: how much higher (in cosine) than the prompt the best variant may score before
            the image fails. The default, 0.05, gives the world CLIP its best pass/fail accuracy on
            the val split (0.90; 0.89-0.90 from 0.04 to 0.09, 0.83 at 0), measured by
            ``benchmarks/clip_pass_tolerance.py``; another CLIP needs its own.
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
        contrast: bool = True,
        tolerance: float = DEFAULT_TOLERANCE,
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
        if tolerance < 0:
            raise ValueError(f"tolerance must be at least 0, got {tolerance}")
        self.contrast, self.tolerance = contrast, tolerance
        self._variants: dict[str, tuple] = {}  # prompt -> _contrast(prompt)
        # text -> its (D,) embedding: the loop and the evaluations ask about the same prompts (and
        # variants) again and again. Cleared when it grows past TEXT_CACHE texts.
        self._text_features: dict[str, torch.Tensor] = {}
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
        """:meth:`critique` for B (image, prompt) pairs: each image and each distinct prompt (with
        its variants) is encoded once."""
        from selfcorrect.vision.clip import encode_images, encode_texts

        if len(images) != len(prompts) or not prompts:
            raise ValueError(f"give one prompt per image; got {len(images)} images, {len(prompts)} prompts")
        unique = list(dict.fromkeys(prompts))
        texts = list(dict.fromkeys(unique + [v.text for p in unique for v in self.variants(p)]))
        new = [t for t in texts if t not in self._text_features]
        if len(self._text_features) + len(new) > TEXT_CACHE:
            self._text_features.clear()
            new = texts
        if new:
            features = encode_texts(
                self.model, self.tokenizer, [self.prefix + t for t in new], self.batch_size
            )
            self._text_features.update(zip(new, features))
        row = {t: i for i, t in enumerate(texts)}
        text_features = torch.stack([self._text_features[t] for t in texts])  # (T, D)
        image_features = encode_images(self.model, self.preprocess, list(images), self.batch_size)  # (B, D)
        cosines = image_features @ text_features.T.to(image_features)  # (B, T)
        return [self._verdict(cosines[b], row, prompt) for b, prompt in enumerate(prompts)]

    def variants(self, prompt: str) -> list[HardNegative]:
        """The prompt's one-edit variants ([] with ``contrast`` off or outside the world grammar)."""
        return [v for v, _ in self._contrast(prompt)[1]]

    def _contrast(self, prompt: str) -> tuple[list[str], list[tuple[HardNegative, tuple[int, ...]]]]:
        """``(requirements, variants)``: the prompt's requirements in words and its one-edit
        variants, each with the requirements it edits (indexes; see
        :func:`~selfcorrect.world.negatives.edited_requirements`). Variants that edit none (they
        restate the prompt) are left out."""
        if not self.contrast:
            return [], []
        if prompt not in self._variants:
            try:
                requirements = parse_prompt(prompt)
                blamed = [
                    (v, edited_requirements(requirements, parse_prompt(v.text)))
                    for v in one_edit_variants(prompt)
                ]
                self._variants[prompt] = (requirements.describe(), [(v, b) for v, b in blamed if b])
            except PromptError:
                self._variants[prompt] = ([], [])
        return self._variants[prompt]

    def _verdict(self, cosines: torch.Tensor, row: dict[str, int], prompt: str) -> ImageVerdict:
        """One image's verdict from its ``(T,)`` cosines with the texts in ``row``."""
        cos = float(cosines[row[prompt]])
        score = float(clipscore(cos)) / CLIPSCORE_WEIGHT
        explanation = f"CLIPScore {CLIPSCORE_WEIGHT * score:.3f} (cosine {cos:.3f})"
        requirements, blamed = self._contrast(prompt)
        variants = sorted(
            (
                {
                    "text": v.text,
                    "edit": v.edit,
                    "requirements": list(b),
                    "cosine": float(cosines[row[v.text]]),
                }
                for v, b in blamed
            ),
            key=lambda v: -v["cosine"],
        )
        findings = (
            [self._finding(r, text, cos, variants) for r, text in enumerate(requirements)] if variants else []
        )
        passed = None
        if self.threshold is not None:
            passed = score >= self.threshold
        elif variants:
            passed = all(f.passed for f in findings)
        if variants:
            better = [v for v in variants if v["cosine"] - cos > self.tolerance]
            if better:
                top = better[0]
                explanation += (
                    f"; {len(better)} of {len(variants)} one-edit variants fit the image better,"
                    f" best {top['text']!r} ({top['edit']}, cosine {top['cosine']:.3f})"
                )
            else:
                explanation += (
                    f"; no one-edit variant fits the image better by more than {self.tolerance:g}"
                    f" (of {len(variants)}, closest {variants[0]['text']!r}, cosine {variants[0]['cosine']:.3f})"
                )
        return ImageVerdict(
            score=score,
            passed=passed,
            findings=findings,
            explanation=explanation,
            critic=self.name,
            details={"cosine": cos, "clipscore": CLIPSCORE_WEIGHT * score, "variants": variants},
        )

    def _finding(self, r: int, requirement: str, cos: float, variants: list[dict]) -> Finding:
        """Requirement ``r`` holds unless a variant that edits it beats the prompt by more than
        the tolerance; its score is CLIP's probability of the prompt against the best such
        variant (the softmax of ``logit_scale * cosine`` over the two)."""
        mine = [v for v in variants if r in v["requirements"]]  # best first
        if not mine:
            return Finding(requirement, True, 1.0, None, "no variant edits it")
        best = mine[0]
        p = float(torch.sigmoid(torch.tensor(self._logit_scale() * (cos - best["cosine"]))))
        return Finding(
            requirement,
            best["cosine"] - cos <= self.tolerance,
            p,
            None,
            f"prompt {cos:.3f} vs {best['text']!r} ({best['edit']}) {best['cosine']:.3f}",
        )

    def _logit_scale(self) -> float:
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.detach().exp()) if scale is not None else 100.0

    def compare(self, image_a, image_b, prompt: str) -> PairwiseVerdict:
        """The image with the higher cosine wins; confidence is CLIP's softmax over the two."""
        cos = self.cosines([image_a, image_b], [prompt, prompt])
        p_first, p_second = torch.softmax(self._logit_scale() * cos, dim=0).tolist()
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
