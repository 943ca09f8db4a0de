"""What a critic promises, one small protocol per kind of judgement.

A critic class implements one or more of these and says which in ``kinds`` (a frozenset of
:data:`KINDS`), so that a caller (the correction loop, a training script, the CLI) can check what
a critic can do without trying it. The protocols are structural (``typing.Protocol``): a critic
does not inherit from anything, it only has the methods.

=========== ======================================================= ==============================
kind        method                                                  returns
=========== ======================================================= ==============================
image       ``critique(image, prompt)``, ``critique_many(images,    :class:`ImageVerdict`
            prompts)``
pairwise    ``compare(image_a, image_b, prompt)``                   :class:`PairwiseVerdict`
answer      ``critique_answer(image, question, response)``          :class:`ImageVerdict`
answer_pair ``compare_answers(image, question, a, b)``              :class:`PairwiseVerdict`
steps       ``critique_steps(image, question, steps, answer)``      :class:`StepVerdict`
tokens      ``reward_tokens(image, prompt, response)``              :class:`TokenVerdict`
=========== ======================================================= ==============================

Images are anything :func:`selfcorrect.vision.images.load_image` reads (a PIL image, a path,
bytes, a uint8 array).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from selfcorrect.critics.verdicts import ImageVerdict, PairwiseVerdict, StepVerdict, TokenVerdict

KINDS = frozenset({"image", "pairwise", "answer", "answer_pair", "steps", "tokens"})


@runtime_checkable
class ImageCritic(Protocol):
    """Judges a generated image against the text prompt it was made from."""

    kinds: frozenset[str]

    def critique(self, image, prompt: str) -> ImageVerdict: ...

    def critique_many(self, images: Sequence, prompts: Sequence[str]) -> list[ImageVerdict]:
        """One verdict per (image, prompt), batched (each image encoded once)."""
        ...


@runtime_checkable
class PairwiseCritic(Protocol):
    """Says which of two images made from one prompt matches it better (position bias cancelled)."""

    kinds: frozenset[str]

    def compare(self, image_a, image_b, prompt: str) -> PairwiseVerdict: ...


@runtime_checkable
class AnswerCritic(Protocol):
    """Judges a model's answer to a question about an image (LLaVA-Critic's pointwise task)."""

    kinds: frozenset[str]

    def critique_answer(self, image, question: str, response: str) -> ImageVerdict: ...


@runtime_checkable
class AnswerPairCritic(Protocol):
    """Says which of two answers to a question about an image is better."""

    kinds: frozenset[str]

    def compare_answers(self, image, question: str, response_a: str, response_b: str) -> PairwiseVerdict: ...


@runtime_checkable
class StepCritic(Protocol):
    """Judges each step of a reasoning chain and its final answer (VISCO)."""

    kinds: frozenset[str]

    def critique_steps(self, image, question: str, steps: Sequence[str], answer: str) -> StepVerdict: ...


@runtime_checkable
class TokenCritic(Protocol):
    """Gives every token of a response a reward (TLDR)."""

    kinds: frozenset[str]

    def reward_tokens(self, image, prompt: str, response: str) -> TokenVerdict: ...
