"""A VLM backend: any transformers image-text-to-text model with its processor.

A critic asks two things of a VLM:

* :meth:`VLM.chat`: free text through the model's own chat template, greedy by default or
  sampled with a seed. For explanations, LookBack-style questions, LLaVA-Critic verdicts.
* :meth:`VLM.score`: the log-probability of given continuations ("Yes"/"No", option letters,
  score digits) after each prompt, from one forward pass per batch and no decoding. This is the
  critics' fast path (DESIGN.md, "Performance principles").

**Each image is encoded once per call.** Images are deduplicated by content (the same object, or
equal pixels), each distinct image is preprocessed once and run through the vision tower once, and
its features are handed to every prompt that shows it through the model's ``mm_encoder_outputs``
input (transformers' own way to pass pre-computed image features, used by ``generate``). The
prompt text is expanded with the processor's own placeholder replacements and tokenized by its
own tokenizer, so the model sees exactly the ids ``processor(text, images)`` would give. The unit
of deduplication is a prompt's group of images, because some models encode an image differently
when it comes with others (LLaVA-OneVision tiles a lone image, not one of several).

**All K continuations of a prompt share one forward pass.** One-token continuations need only the
prompt: their log-probabilities are read from the logits at its last position. Longer ones are
packed behind the prompt in the same row, each in its own slot, under a block attention mask (a
slot sees the prompt and its own earlier tokens, never another slot) with position ids that
continue from the prompt's, so the image and prompt are computed once for all K. Models whose
attention cannot take such a mask (flash attention, sliding windows, bidirectional image blocks)
get one row per continuation instead; both give the log-probabilities of teacher forcing
``prompt + continuation``. Continuations are tokenized on their own, without special tokens: the
tokens a model emits when it answers "Yes" after its generation prompt.

Padding never changes a result: rows are left-padded and given the position ids ``generate``
would give (from the attention mask, and 3-D M-RoPE ids for Qwen2-VL), so a prompt scores the
same alone and in a batch.

Loading (:meth:`VLM.from_pretrained`) takes a Hugging Face model id or a local folder, safetensors
only, ``trust_remote_code`` off unless asked. LLaVA-Critic is a LLaVA-OneVision model, but
``lmms-lab/llava-critic-7b`` is stored in the original LLaVA-NeXT training format, which
transformers cannot load; use a converted ``-hf`` checkpoint (e.g. the community conversion
``FuryMartin/llava-critic-7b-hf``, transformers issue #34467) or convert it with transformers'
``convert_llava_onevision_weights_to_hf.py``. Such a folder is refused with that advice.

Example::

    vlm = VLM.from_pretrained("llava-hf/llava-onevision-qwen2-7b-ov-hf", device="cuda")
    logp = vlm.score([image, image], ["Is there a red cube?", "Is there a blue ball?"], ["Yes", "No"])
    p_yes = logp.softmax(-1)[:, 0]                              # (2,)
    [why] = vlm.chat([image], ["What is wrong with this image?"], max_new_tokens=64)
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

import selfcorrect
from selfcorrect.errors import ImageError, SelfcorrectError
from selfcorrect.vision.images import image_key, load_image

DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_BATCH_SIZE = 8

WORLD = "world"  # loader name of the embedded world's VLM
WORLD_VLM_DIR = Path(selfcorrect.__file__).resolve().parent / "weights" / "world-vlm"

# family name (= config.model_type) -> transformers class; "auto" takes whatever the config names
FAMILIES = {
    "auto": "AutoModelForImageTextToText",
    "llava": "LlavaForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}
# Families whose text towers are plain causal decoders that honour a custom 4-D attention mask, so
# that several continuations can share a row (see the module docstring).
PACKABLE_MODEL_TYPES = frozenset({"llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl"})
PACKABLE_ATTENTION = frozenset({"sdpa", "eager"})
# config.json keys that only the original LLaVA / LLaVA-NeXT training code writes
ORIGINAL_LLAVA_KEYS = ("mm_vision_tower", "mm_projector_type")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Per-token inputs a processor may return beside input_ids; they are padded and packed alongside.
TOKEN_TYPE_KEYS = ("mm_token_type_ids", "token_type_ids")
# Tokenizer options a processor may default to that we handle ourselves: padding is ours, and
# prompts are never truncated (that could cut image tokens); too long is an error instead.
OWN_TEXT_OPTIONS = ("return_tensors", "padding", "padding_side", "truncation", "max_length")


class ModelNotFoundError(SelfcorrectError, FileNotFoundError):
    """The model's files are not here: not downloaded (offline), unknown id, missing folder."""


class ModelFormatError(SelfcorrectError, ValueError):
    """The model was found but cannot be used: wrong format, pickle-only weights, not a VLM."""


class VLMInputError(SelfcorrectError, ValueError):
    """Unusable input to a VLM call: empty prompt, mismatched lengths, context overflow."""


@dataclass
class ContinuationScores:
    """Log-probabilities of K continuations after each of B prompts.

    Attributes:
        token_logprobs: ``token_logprobs[b][k]`` has shape ``(n_tokens,)``: log p of each token of
            continuation ``k`` given prompt ``b`` and the continuation's earlier tokens.
    """

    token_logprobs: list[list[torch.Tensor]]

    @property
    def sum(self) -> torch.Tensor:
        """``(B, K)`` float: log p(continuation | prompt), the sum over its tokens."""
        return torch.stack([torch.stack([t.sum() for t in row]) for row in self.token_logprobs])

    @property
    def mean(self) -> torch.Tensor:
        """``(B, K)`` float: mean token log-probability (log of VQAScore's geometric mean)."""
        return torch.stack([torch.stack([t.mean() for t in row]) for row in self.token_logprobs])

    @property
    def lengths(self) -> torch.Tensor:
        """``(B, K)`` long: number of tokens of each continuation."""
        return torch.tensor([[len(t) for t in row] for row in self.token_logprobs])


@dataclass
class _Row:
    """One tokenized prompt: its ids, per-token side inputs, and which encoded images it shows."""

    ids: list[int]
    token_types: dict[str, list[int]]
    images: list[int]  # indices into _Encoded.features, in placeholder order


@dataclass
class _Encoded:
    """Vision features of the distinct images of a call, one entry per image."""

    features: list[torch.Tensor] = field(default_factory=list)  # (n_tokens, hidden) each
    deepstack: list[list[torch.Tensor]] | None = None  # per layer, per image (Qwen3-VL style)
    per_image: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # e.g. image_grid_thw rows
    output_class: type | None = None


class VLM:
    """A transformers image-text-to-text model and its processor, for chat and scoring.

    Args:
        model: a ``*ForConditionalGeneration`` model whose ``forward`` accepts
            ``mm_encoder_outputs``: most image-text-to-text classes of transformers 5. Tested:
            LLaVA-1.5, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL; others (LLaVA-NeXT, Gemma 3,
            Idefics 3, ...) take the same, generic path.
        processor: its processor, with a tokenizer, an image processor and a chat template.
        name: shown in messages; defaults to the model's ``name_or_path``.
    """

    def __init__(self, model, processor, *, name: str | None = None):
        import transformers
        from transformers.processing_utils import ProcessorMixin

        if not hasattr(ProcessorMixin, "get_text_with_replacements"):
            raise SelfcorrectError(
                "the VLM backend needs transformers 5 (pre-computed image features, processor "
                f"placeholder expansion; tested with 5.23), but {transformers.__version__} is installed"
            )
        self.name = name or getattr(model, "name_or_path", "") or type(model).__name__
        if "mm_encoder_outputs" not in inspect.signature(model.forward).parameters:
            raise ModelFormatError(
                f"{self.name}: {type(model).__name__} cannot take pre-computed image features "
                "(mm_encoder_outputs), which selfcorrect needs to encode each image once; "
                "encoder-decoder and cross-attention VLMs are not supported"
            )
        self.tokenizer = getattr(processor, "tokenizer", None)
        self.image_token = getattr(processor, "image_token", None)
        if (
            self.tokenizer is None
            or self.image_token is None
            or getattr(processor, "image_processor", None) is None
        ):
            raise ModelFormatError(
                f"{self.name}: {type(processor).__name__} is not an image-text processor "
                "(it needs a tokenizer, an image processor and an image token)"
            )
        if not getattr(processor, "chat_template", None):
            raise ModelFormatError(
                f"{self.name}: the processor has no chat template; set processor.chat_template "
                "(base checkpoints without one are not supported)"
            )
        self.model = model.eval()
        self.processor = processor
        text_config = model.config.get_text_config()
        self.max_positions: int | None = getattr(text_config, "max_position_embeddings", None)
        self._pad_id = next(
            (i for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) if i is not None), 0
        )
        self._encoder = model.base_model.get_image_features
        self._encoder_args = set(inspect.signature(self._encoder).parameters) - {"kwargs"}
        self._forward_args = set(inspect.signature(model.forward).parameters)
        # Processors built on ProcessorMixin's standard pipeline expose the per-image placeholder
        # expansion; others (Gemma 3, Idefics 3, ...) are called whole on each prompt's images.
        self._standard_processor = (
            type(processor).__call__ is ProcessorMixin.__call__
            and type(processor).replace_image_token is not ProcessorMixin.replace_image_token
        )
        # packing needs our position ids (each slot restarts after the prompt) and our 4-D mask
        self.packs_continuations = (
            "position_ids" in self._forward_args
            and model.config.model_type in PACKABLE_MODEL_TYPES
            and text_config._attn_implementation in PACKABLE_ATTENTION
            and "sliding_attention" not in (getattr(text_config, "layer_types", None) or [])
        )

    def __repr__(self) -> str:
        return f"VLM({self.name!r}, {type(self.model).__name__}, {self.device}, {self.dtype})"

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    # ----------------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        family: str = "auto",
        dtype: str | torch.dtype | None = None,
        device: str | torch.device = "cpu",
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
    ) -> VLM:
        """Load a VLM by Hugging Face id, local folder, or the name ``"world"``.

        Args:
            source: a hub id (``"llava-hf/llava-onevision-qwen2-7b-ov-hf"``,
                ``"Qwen/Qwen2-VL-2B-Instruct"``, ``"llava-hf/llava-1.5-7b-hf"``), a folder saved with
                ``save_pretrained``, or ``"world"`` for the embedded world's VLM
                (``selfcorrect/weights/world-vlm``, written by its training script).
            family: one of :data:`FAMILIES`; ``"auto"`` takes the class the config names, any other
                value also checks that the checkpoint is of that family.
            dtype: ``None`` (float32 on CPU, bfloat16 on CUDA where supported, else float16),
                ``"auto"`` (the checkpoint's), a name such as ``"bfloat16"`` or a ``torch.dtype``.
            device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
            trust_remote_code: run Python code shipped with the checkpoint; off unless you ask.
            attn_implementation: passed to transformers (``"sdpa"``, ``"eager"``,
                ``"flash_attention_2"``); ``None`` lets it choose.

        Raises:
            ModelNotFoundError: the files are not available (not downloaded while offline, unknown
                id, missing folder, ``"world"`` not built yet); the message says what to download.
            ModelFormatError: the files are there but unusable (original LLaVA-NeXT format,
                pickle-only weights, not an image-text-to-text model, wrong family).
        """
        import transformers

        if family not in FAMILIES:
            raise ModelFormatError(f"unknown VLM family {family!r}; choose one of {', '.join(FAMILIES)}")
        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        location = locate_checkpoint(source)
        config = load_checkpoint_config(location, source, trust_remote_code)
        if family != "auto" and config.model_type != family:
            raise ModelFormatError(f"{source} is a {config.model_type!r} checkpoint, not {family!r}")
        model_class = getattr(transformers, FAMILIES[family])
        options = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = load_weights(
            model_class,
            location,
            source,
            config,
            dtype=torch_dtype,
            device=device,
            trust_remote_code=trust_remote_code,
            kind="an image-text-to-text model",
            hint=". Is it a checkpoint of another format?",
            **options,
        )
        try:
            processor = transformers.AutoProcessor.from_pretrained(
                location, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError, TypeError) as e:
            raise ModelFormatError(f"{source}: cannot load its processor: {first_line(e)}") from None
        return cls(model, processor, name=str(source))

    # -------------------------------------------------------------------------------------- chat

    def chat(
        self,
        images,
        messages,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[str]:
        """Answer B conversations, each about its image(s).

        Args:
            images: one entry per conversation (an image, a list of images, or ``None`` for text
                only), or a single image shared by all; an image is a path, bytes, a PIL image or
                a uint8 array (see :func:`selfcorrect.vision.images.load_image`).
            messages: B prompts, each a string (one user turn) or a list of chat messages
                ``{"role": ..., "content": str | list of parts}``. Image parts
                (``{"type": "image"}``) are added at the start of the first user turn unless the
                conversation already has one per image.
            max_new_tokens: the most tokens generated per answer.
            do_sample: sample instead of greedy decoding.
            temperature, top_p: sampling parameters (ignored when greedy).
            seed: makes sampling reproducible (for a given ``batch_size``) without touching the
                global random state.
            batch_size: conversations per ``generate`` call.

        Returns:
            B answers, special tokens removed and whitespace stripped.
        """
        if max_new_tokens < 1:
            raise VLMInputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if do_sample and temperature <= 0:
            raise VLMInputError(f"temperature must be positive when sampling, got {temperature}")
        groups, conversations = self._normalise(images, messages)
        texts = [self._render(c, len(g)) for c, g in zip(conversations, groups)]
        rows, encoded = self._prepare(
            groups, texts, [max_new_tokens] * len(texts), _check_batch_size(batch_size)
        )
        config = copy.deepcopy(self.model.generation_config)
        config.update(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=self._pad_id)
        # sampling uses exactly temperature and top_p: a checkpoint's own top_k (Qwen2-VL ships
        # top_k=1) would silently turn it back into greedy decoding
        config.update(
            top_k=None, temperature=temperature if do_sample else None, top_p=top_p if do_sample else None
        )
        answers = []
        with torch.inference_mode(), _seeded(seed, self.device):
            for start in range(0, len(rows), batch_size):
                inputs, _ = self._batch(rows[start : start + batch_size], encoded)
                generated = self.model.generate(**inputs, generation_config=config)
                new_tokens = generated[:, inputs["input_ids"].shape[1] :]
                answers += [
                    a.strip() for a in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                ]
        return answers

    # ----------------------------------------------------------------------------------- scoring

    def score(
        self, images, prompts, continuations, *, reduction: str = "sum", batch_size: int = DEFAULT_BATCH_SIZE
    ) -> torch.Tensor:
        """Log-probabilities of continuations after each prompt; no decoding.

        One forward pass per batch: each prompt's continuations sit in slots after it that do
        not see each other, and the tokens they all start with (``Final Score: `` of ``Final
        Score: 0`` ... ``Final Score: 100``) are scored once, at the end of the prompt.

        Args:
            images: as for :meth:`chat`: one entry per prompt, or one image for all.
            prompts: B prompts (strings or conversations, as for :meth:`chat`), rendered with the
                chat template and its generation prompt.
            continuations: K strings shared by all prompts (``["Yes", "No"]``), or B lists of K
                strings, one list per prompt.
            reduction: ``"sum"`` (log p of the whole continuation) or ``"mean"`` (per token).
            batch_size: prompts per forward pass.

        Returns:
            ``(B, K)`` float32 on the CPU, each entry <= 0.
        """
        if reduction not in ("sum", "mean"):
            raise VLMInputError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        scores = self.score_details(images, prompts, continuations, batch_size=batch_size)
        return scores.sum if reduction == "sum" else scores.mean

    def score_many(self, image, prompts, continuations, **options) -> torch.Tensor:
        """:meth:`score` of many prompts about one image (encoded once): ``(len(prompts), K)``."""
        return self.score([image] * len(prompts), prompts, continuations, **options)

    def score_details(
        self, images, prompts, continuations, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> ContinuationScores:
        """:meth:`score` with per-token log-probabilities (see :class:`ContinuationScores`)."""
        _check_batch_size(batch_size)
        groups, conversations = self._normalise(images, prompts)
        candidates = _continuation_lists(continuations, len(conversations))
        token_ids = self._tokenize_continuations(candidates)
        texts = [self._render(c, len(g)) for c, g in zip(conversations, groups)]
        rows, encoded = self._prepare(
            groups, texts, [max(len(t) for t in row) for row in token_ids], batch_size
        )
        # The tokens all of a prompt's continuations start with ("Final Score: " before 0, 10, ...,
        # 100) are scored once, as the end of the prompt, instead of once in every slot: the same
        # log-probabilities from a shorter forward pass. Each continuation keeps at least one token.
        shared = [_common_prefix(row) for row in token_ids]
        rows = [_extended(row, prefix) for row, prefix in zip(rows, shared)]
        rests = [[t[len(prefix) :] for t in row] for row, prefix in zip(token_ids, shared)]
        n_candidates = len(candidates[0])
        longest = max(len(t) for row in rests for t in row)
        # A unit is one model row: a prompt with all its continuations in slots, or, for models
        # that cannot pack, one row per continuation.
        if longest == 1 or self.packs_continuations:
            units = [(b, list(range(n_candidates))) for b in range(len(rows))]
        else:
            units = [(b, [k]) for b in range(len(rows)) for k in range(n_candidates)]
        logprobs: list[list[torch.Tensor | None]] = [[None] * n_candidates for _ in rows]
        with torch.inference_mode():
            for start in range(0, len(units), batch_size):
                chunk = units[start : start + batch_size]
                slots = [[rests[b][k][:-1] for k in ks] for b, ks in chunk]
                inputs, slot_len = self._batch([rows[b] for b, _ in chunk], encoded, slots)
                m = max(len(shared[b]) for b, _ in chunk)  # the longest shared prefix in the chunk
                keep = m + len(chunk[0][1]) * slot_len + 1  # shared prefixes, prompt end, slots
                if "logits_to_keep" in self._forward_args:
                    inputs["logits_to_keep"] = keep
                logits = self.model(**inputs, use_cache=False).logits[:, -keep:]
                logp = torch.log_softmax(logits.float(), dim=-1)  # (rows, keep, vocab)
                for i, (b, ks) in enumerate(chunk):
                    # kept index m is the last prompt position (the prefix's last token); prefix
                    # token t of n is predicted at kept index m - n + t
                    n = len(shared[b])
                    before = logp[i, [m - n + t for t in range(n)], shared[b]]
                    for j, k in enumerate(ks):
                        tokens = rests[b][k]
                        # token 0 is predicted at the prompt's last position, token t > 0 at slot
                        # j's position t - 1 (kept index m + j * slot_len + t)
                        where = [m] + [m + j * slot_len + t for t in range(1, len(tokens))]
                        logprobs[b][k] = torch.cat([before, logp[i, where, tokens]]).cpu()
        return ContinuationScores(logprobs)

    @property
    def pad_token_id(self) -> int:
        """The token id batches are padded with (the tokenizer's pad token, else its end of text)."""
        return self._pad_id

    def prefixed_inputs(
        self,
        images,
        prompts,
        prefixes: Sequence[Sequence[int]],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        extra: Sequence[int] | None = None,
    ) -> Iterator[tuple[list[int], dict, int]]:
        """Model inputs for prompts each followed by given tokens, as if the model had written them.

        For critics that read the model's states over an answer (TLDR's token head) or continue
        an answer from a prefix. Each prompt is rendered with the chat template's generation
        prompt; each image is encoded once, before the first batch is yielded.

        Args:
            images, prompts: as for :meth:`chat`.
            prefixes: B lists of token ids, one per prompt (possibly empty).
            batch_size: prompts per yielded batch.
            extra: tokens that will follow each prefix (e.g. ``max_new_tokens``), for the context
                length check; default 0.

        Yields:
            ``(indexes, inputs, prompt_len)``: the prompts of this batch; keyword arguments for
            ``model(...)`` / ``model.generate(...)`` with ``input_ids`` of shape
            ``(R, prompt_len + L)``, prompts left-padded to ``prompt_len`` and prefix ``r``
            starting there (right-padded to the longest, ``L``); the padded prompt length.

        Raises:
            VLMInputError: bad inputs, or a prompt, its prefix and ``extra`` exceed the context.
        """
        _check_batch_size(batch_size)
        groups, conversations = self._normalise(images, prompts)
        if len(prefixes) != len(conversations):
            raise VLMInputError(
                f"give one prefix per prompt; got {len(prefixes)} for {len(conversations)} prompts"
            )
        more = [0] * len(prefixes) if extra is None else list(extra)
        texts = [self._render(c, len(g)) for c, g in zip(conversations, groups)]
        rows, encoded = self._prepare(groups, texts, [len(p) + e for p, e in zip(prefixes, more)], batch_size)
        for start in range(0, len(rows), batch_size):
            chunk = list(range(start, min(start + batch_size, len(rows))))
            slots = [[[int(t) for t in prefixes[b]]] for b in chunk]
            inputs, slot_len = self._batch([rows[b] for b in chunk], encoded, slots)
            yield chunk, inputs, inputs["input_ids"].shape[1] - slot_len

    # ---------------------------------------------------------------------------- input handling

    def _normalise(self, images, messages) -> tuple[list[tuple], list[list[dict]]]:
        """Check and normalise the per-item inputs into image groups and chat conversations."""
        if isinstance(messages, (str, dict)) or not isinstance(messages, (list, tuple)):
            raise VLMInputError("pass a list of prompts, one per item (a single prompt goes in a list)")
        if not messages:
            raise VLMInputError("no prompts given")
        if isinstance(images, (list, tuple)):
            if len(images) != len(messages):
                raise VLMInputError(
                    f"got {len(images)} images for {len(messages)} prompts; pass one entry per prompt "
                    "(several images for one prompt go in a list: [[a, b]])"
                )
        else:
            images = [images] * len(messages)
        groups = [
            tuple(entry) if isinstance(entry, (list, tuple)) else (() if entry is None else (entry,))
            for entry in images
        ]
        conversations = [_conversation(m, len(g), i) for i, (m, g) in enumerate(zip(messages, groups))]
        return groups, conversations

    def _render(self, conversation: list[dict], n_images: int) -> str:
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        if text.count(self.image_token) != n_images:
            raise VLMInputError(
                f"the rendered prompt has {text.count(self.image_token)} image placeholders "
                f"({self.image_token!r}) for {n_images} images; does the prompt text contain the placeholder?"
            )
        return text

    def _tokenize_continuations(self, candidates: list[list[str]]) -> list[list[list[int]]]:
        cache: dict[str, list[int]] = {}
        for text in {t for row in candidates for t in row}:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            if not ids:
                raise VLMInputError(f"continuation {text!r} is empty once tokenized")
            cache[text] = ids
        return [[cache[t] for t in row] for row in candidates]

    def _prepare(self, groups, texts, extra, batch_size) -> tuple[list[_Row], _Encoded]:
        """Load, deduplicate, preprocess and tokenize; check lengths; then encode each image once.

        Args:
            groups: the image sources of each prompt (possibly none).
            texts: the rendered prompts, one image placeholder per image.
            extra: how many tokens will follow each prompt (continuation or answer), for the
                context-length check, which happens before anything runs on the model.
            batch_size: distinct image groups per vision-tower call.
        """
        distinct, row_group = _deduplicate(groups)
        starts = list(itertools.accumulate((len(g) for g in distinct), initial=0))
        row_images = [list(range(starts[g], starts[g + 1])) if g is not None else [] for g in row_group]
        chunks = [self._preprocess(distinct[i : i + batch_size]) for i in range(0, len(distinct), batch_size)]
        if self._standard_processor:
            replacements = [text for _, chunk in chunks for text in chunk]
            encoding = self._expand_and_tokenize(texts, [replacements[i] for row in row_images for i in row])
        else:
            images = [distinct[g] if g is not None else [] for g in row_group]
            encoding = dict(
                self.processor(text=list(texts), images=images if distinct else None, truncation=False)
            )
        side = [k for k in TOKEN_TYPE_KEYS if k in encoding]
        rows = [
            _Row(list(encoding["input_ids"][n]), {k: list(encoding[k][n]) for k in side}, row_images[n])
            for n in range(len(texts))
        ]
        for n, (row, more) in enumerate(zip(rows, extra)):
            if self.max_positions is not None and len(row.ids) + more > self.max_positions:
                raise VLMInputError(
                    f"prompt {n} is too long for {self.name}: {len(row.ids)} tokens (image tokens "
                    f"included) + {more} to score or generate > the context of {self.max_positions}; "
                    "shorten the text or use a smaller image"
                )
        encoded = _Encoded()
        with torch.inference_mode():
            for processed, _ in chunks:
                self._encode(processed, encoded)
        return rows, encoded

    def _preprocess(self, groups: list[list]) -> tuple[dict, list[str]]:
        """Image-processor outputs for groups of images, and each image's placeholder expansion
        (only from processors with the standard expansion hooks)."""
        try:
            if self._standard_processor:
                kwargs = self.processor._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs)
                return self.processor._process_images(
                    groups, **{**kwargs["images_kwargs"], "return_tensors": "pt"}
                )
            texts = [self.image_token * len(group) for group in groups]
            return dict(self.processor(text=texts, images=groups, padding=True, return_tensors="pt")), []
        except ValueError as e:  # e.g. Qwen2-VL refuses aspect ratios above 200
            raise ImageError(f"{self.name}'s image processor cannot use an image: {e}") from None

    def _expand_and_tokenize(self, texts: list[str], replacements: list[str]) -> dict:
        """What ``processor(text, images)`` does to the text, with the images' expansions given."""
        kwargs = self.processor._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs)
        expanded, _ = self.processor.get_text_with_replacements(list(texts), replacements)
        options = {k: v for k, v in kwargs["text_kwargs"].items() if k not in OWN_TEXT_OPTIONS}
        encoding = dict(self.tokenizer(expanded, **options))
        if kwargs["return_mm_token_type_ids"]:
            encoding["mm_token_type_ids"] = self.processor.create_mm_token_type_ids(encoding["input_ids"])
        return encoding

    # --------------------------------------------------------------------------------- the model

    def _encode(self, processed: dict, encoded: _Encoded) -> None:
        """Run the vision tower on preprocessed images and append their features to ``encoded``."""
        inputs = {k: v for k, v in processed.items() if k in self._encoder_args}
        output = self._encoder(
            **{k: _to_device(v, self.device, self.dtype) for k, v in inputs.items()}, return_dict=True
        )
        features = list(output.pooler_output)
        n = len(features)
        encoded.features += features
        encoded.output_class = type(output)
        if getattr(output, "deepstack_features", None) is not None:
            layers = [list(layer) for layer in output.deepstack_features]
            encoded.deepstack = (
                [a + b for a, b in zip(encoded.deepstack, layers)] if encoded.deepstack else layers
            )
        # per-image tensors the position ids depend on (image_grid_thw, image_sizes)
        for k, v in inputs.items():
            if (
                not k.startswith("pixel_values")
                and isinstance(v, torch.Tensor)
                and v.ndim
                and v.shape[0] == n
            ):
                encoded.per_image.setdefault(k, []).extend(v)

    def _batch(self, rows: list[_Row], encoded: _Encoded, slots: list[list[list[int]]] | None = None):
        """Model inputs for ``rows``: left-padded prompts, then each row's slots of continuation tokens.

        Returns:
            ``(inputs, slot_len)``: keyword arguments for ``model(...)`` / ``generate(...)`` with
            ``input_ids`` of shape ``(R, P + L * slot_len)`` (P the longest prompt, L slots per
            row), and the length of a slot.
        """
        slots = slots or [[] for _ in rows]
        n_slots = len(slots[0])
        slot_len = max((len(t) for row in slots for t in row), default=0)
        prompt_len = max(len(row.ids) for row in rows)
        total = prompt_len + n_slots * slot_len
        ids = torch.full((len(rows), total), self._pad_id, dtype=torch.long)
        valid = torch.zeros((len(rows), total), dtype=torch.bool)
        side = {k: torch.zeros((len(rows), total), dtype=torch.long) for k in rows[0].token_types}
        for i, row in enumerate(rows):
            start = prompt_len - len(row.ids)
            ids[i, start:prompt_len] = torch.tensor(row.ids)
            valid[i, start:prompt_len] = True
            for k, values in row.token_types.items():
                side[k][i, start:prompt_len] = torch.tensor(values)
            for j, tokens in enumerate(slots[i]):
                at = prompt_len + j * slot_len
                ids[i, at : at + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                valid[i, at : at + len(tokens)] = True
        inputs = {"input_ids": ids, **{k: v for k, v in side.items() if k in self._forward_args}}
        if "position_ids" in self._forward_args:
            positions = self._positions(rows, encoded, ids[:, :prompt_len], valid[:, :prompt_len], side)
            # continuation tokens continue from the prompt's last position; each slot restarts there
            steps = (torch.arange(slot_len) + 1).repeat(n_slots)
            inputs["position_ids"] = torch.cat([positions, positions[..., -1:] + steps], dim=-1)
        if n_slots > 1 and slot_len > 0:
            dtype = self.model.get_input_embeddings().weight.dtype
            inputs["attention_mask"] = _slot_mask(valid.to(self.device), prompt_len, slot_len, dtype)
        else:
            inputs["attention_mask"] = valid.long()
        shown = [i for row in rows for i in row.images]
        if shown:
            selected = {"pooler_output": [encoded.features[i] for i in shown]}
            if encoded.deepstack is not None:
                selected["deepstack_features"] = [[layer[i] for i in shown] for layer in encoded.deepstack]
            inputs["mm_encoder_outputs"] = {"image": encoded.output_class(**selected)}
        return {k: _to_device(v, self.device, None) for k, v in inputs.items()}, slot_len

    def _positions(self, rows, encoded, ids, valid, side) -> torch.Tensor:
        """Position ids of the prompts, as ``generate`` computes them: from the attention mask, so
        that padding shifts nothing, and in M-RoPE models from the image grids."""
        shown = [i for row in rows for i in row.images]
        kwargs = {
            "input_ids": ids,
            "attention_mask": valid.long(),
            **{k: v[:, : ids.shape[1]] for k, v in side.items()},
            **{
                k: torch.stack([values[i] for i in shown]) for k, values in encoded.per_image.items() if shown
            },
        }
        return self.model._prepare_position_ids_for_generation(ids, kwargs).cpu()


# ------------------------------------------------------------------------------------- helpers


def _conversation(message, n_images: int, index: int) -> list[dict]:
    """A chat conversation with list-of-parts contents and one image part per image."""
    if isinstance(message, str):
        message = [{"role": "user", "content": message}]
    if not isinstance(message, (list, tuple)) or not all(
        isinstance(m, dict) and "role" in m for m in message
    ):
        raise VLMInputError(f"prompt {index} must be a string or a list of {{'role', 'content'}} messages")
    conversation = []
    for m in message:
        content = m.get("content", "")
        parts = (
            [{"type": "text", "text": content}] if isinstance(content, str) else [dict(p) for p in content]
        )
        conversation.append({**m, "content": parts})
    text = "".join(p.get("text", "") for m in conversation for p in m["content"] if p.get("type") == "text")
    if not text.strip():
        raise VLMInputError(f"prompt {index} is empty")
    n_parts = sum(p.get("type") == "image" for m in conversation for p in m["content"])
    if n_parts == 0 and n_images:
        first_user = next((m for m in conversation if m["role"] == "user"), None)
        if first_user is None:
            raise VLMInputError(f"prompt {index} has no user message to attach its image to")
        first_user["content"] = [{"type": "image"}] * n_images + first_user["content"]
    elif n_parts != n_images:
        raise VLMInputError(f"prompt {index} has {n_parts} image parts but {n_images} images were given")
    return conversation


def _continuation_lists(continuations, n_prompts: int) -> list[list[str]]:
    if isinstance(continuations, str) or not isinstance(continuations, (list, tuple)) or not continuations:
        raise VLMInputError("continuations must be a non-empty list of strings, or one such list per prompt")
    if all(isinstance(c, str) for c in continuations):
        return [list(continuations)] * n_prompts
    if len(continuations) != n_prompts or not all(isinstance(c, (list, tuple)) for c in continuations):
        raise VLMInputError(f"give one list of continuations per prompt ({n_prompts}), or one list for all")
    sizes = {len(c) for c in continuations}
    if len(sizes) != 1 or 0 in sizes or not all(isinstance(t, str) for c in continuations for t in c):
        raise VLMInputError("every prompt needs the same number (> 0) of string continuations")
    return [list(c) for c in continuations]


def _common_prefix(sequences: list[list[int]]) -> list[int]:
    """The longest token prefix all sequences share, leaving every sequence at least one token."""
    shortest = min(len(s) for s in sequences)
    n = 0
    while n < shortest - 1 and all(s[n] == sequences[0][n] for s in sequences):
        n += 1
    return list(sequences[0][:n])


def _extended(row: _Row, tokens: list[int]) -> _Row:
    """``row`` followed by plain text ``tokens`` (side inputs 0, as for text the model wrote)."""
    if not tokens:
        return row
    types = {k: v + [0] * len(tokens) for k, v in row.token_types.items()}
    return _Row(row.ids + list(tokens), types, row.images)


def _slot_mask(valid: torch.Tensor, prompt_len: int, slot_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask ``(R, 1, T, T)``: causal over real tokens, slots blind to each other.

    A query sees keys at or before it that are real tokens of the prompt or of its own slot. Every
    position also sees itself, so padding rows stay finite (a fully masked row would be NaN).
    """
    total = valid.shape[1]
    index = torch.arange(total, device=valid.device)
    region = torch.where(index < prompt_len, -1, (index - prompt_len) // max(slot_len, 1))  # -1: prompt
    visible = (region[None, :] == -1) | (region[None, :] == region[:, None])
    allowed = (index[None, :] <= index[:, None]) & visible  # (T, T)
    allowed = (allowed[None] & valid[:, None, :]) | torch.eye(total, dtype=torch.bool, device=valid.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)  # (R, T, T)
    return mask[:, None]


def _deduplicate(groups: list[tuple]) -> tuple[list[list], list[int | None]]:
    """Load every image once and keep one copy of each distinct group of images.

    Returns:
        ``(distinct, row_group)``: the distinct groups as lists of RGB images, and for each input
        row the index of its group in ``distinct`` (``None`` for a row without images).
    """
    loaded: dict[int, tuple] = {}  # id(source) -> (image, key); sources stay alive in ``groups``
    index: dict[tuple, int] = {}
    distinct, row_group = [], []
    for n, group in enumerate(groups):
        for source in group:
            if id(source) not in loaded:
                try:
                    image = load_image(source)
                except ImageError as e:
                    raise ImageError(f"item {n}: {e}") from None
                loaded[id(source)] = (image, image_key(image))
        key = tuple(loaded[id(source)][1] for source in group)
        if key and key not in index:
            index[key] = len(distinct)
            distinct.append([loaded[id(source)][0] for source in group])
        row_group.append(index.get(key))
    return distinct, row_group


def _to_device(value, device, dtype):
    if isinstance(value, torch.Tensor):
        return value.to(device, dtype=dtype if dtype is not None and value.is_floating_point() else None)
    return value


def _check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise VLMInputError(f"batch_size must be at least 1, got {batch_size}")
    return batch_size


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Seed torch's generators for the block, restoring the caller's random state afterwards."""
    if seed is None:
        yield
        return
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def resolve_device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise VLMInputError(f"unknown device {device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VLMInputError(f"device {str(device)!r} asked for, but CUDA is not available")
    return device


def resolve_dtype(dtype, device: torch.device):
    if dtype is None:
        if device.type == "cpu":
            return torch.float32
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    if dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise VLMInputError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16' or 'auto'")
    return resolved


def locate_checkpoint(source) -> str:
    """The folder or hub id to load ``source`` from; raises ModelNotFoundError when it cannot exist."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if str(source) == WORLD:
        if not (WORLD_VLM_DIR / "config.json").is_file():
            raise ModelNotFoundError(
                f"the world VLM is not built yet: {WORLD_VLM_DIR} is missing. It is written by the world "
                "VLM's training script in selfcorrect.train (a LLaVA-family checkpoint saved with "
                "save_pretrained); run that script, or pass another model"
            )
        return str(WORLD_VLM_DIR)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} has no config.json: it is not a folder saved with save_pretrained"
            )
        return str(path)
    text = str(source)
    if path.exists() or os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1:
        raise ModelNotFoundError(f"no model folder at {text}")
    try:
        validate_repo_id(text)
    except HFValidationError:
        raise ModelNotFoundError(
            f"{text!r} is neither a model folder nor a Hugging Face model id (owner/name)"
        ) from None
    return text


def load_checkpoint_config(location: str, source, trust_remote_code: bool):
    from transformers import AutoConfig, PretrainedConfig

    try:
        raw, _ = PretrainedConfig.get_config_dict(location)
    except OSError as e:
        raise _not_found(source, e) from None
    if any(key in raw for key in ORIGINAL_LLAVA_KEYS):
        raise ModelFormatError(
            f"{source} is in the original LLaVA / LLaVA-NeXT training format "
            f"(architectures {raw.get('architectures')}), which transformers cannot load. Use a converted "
            "'-hf' checkpoint (for LLaVA-Critic-7B e.g. FuryMartin/llava-critic-7b-hf) or convert it with "
            "transformers' models/llava_onevision/convert_llava_onevision_weights_to_hf.py "
            "(models/llava/convert_llava_weights_to_hf.py for LLaVA-1.5)"
        )
    try:
        return AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise _not_found(source, e) from None
    except ValueError as e:
        hint = (
            " (pass trust_remote_code=True only if you trust its code)"
            if "trust_remote_code" in str(e)
            else ""
        )
        raise ModelFormatError(f"cannot read the config of {source}{hint}: {first_line(e)}") from None


def _not_found(source, error: Exception) -> ModelNotFoundError:
    from huggingface_hub import constants, is_offline_mode

    if is_offline_mode():
        return ModelNotFoundError(
            f"model {str(source)!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            "downloads are off (HF_HUB_OFFLINE=1). On a machine with network run "
            f"`hf download {source}` (config, processor files and *.safetensors weights) and copy the "
            "cache here, or pass the path of a folder saved with save_pretrained"
        )
    return ModelNotFoundError(
        f"cannot load model {str(source)!r}: no such folder, and the Hugging Face Hub does not have it or "
        f"cannot be reached ({first_line(error)}). Check the id, or download it with "
        f"`hf download {source}` and pass the folder"
    )


def load_weights(
    model_class,
    location: str,
    source,
    config,
    *,
    dtype,
    device,
    trust_remote_code: bool = False,
    kind: str | None = None,
    hint: str = "",
    **options,
):
    """``model_class.from_pretrained`` with selfcorrect's loading rules and errors.

    safetensors only, straight onto ``device`` (no CPU copy of a large model first), and a
    checkpoint whose tensors do not all fit the class is refused instead of left half random.
    Shared by the VLM, the detectors and the controller.

    Args:
        model_class: a transformers model class.
        location, source, config: from :func:`locate_checkpoint` and :func:`load_checkpoint_config`.
        kind: what the model should be (``"a causal language model"``); when given, a
            ``ValueError`` from transformers becomes a :class:`ModelFormatError` saying so.
        hint: appended to the missing-tensors message.
        **options: more ``from_pretrained`` keyword arguments.

    Raises:
        ModelNotFoundError, ModelFormatError: see :func:`weights_error`; missing tensors.
    """
    try:
        model, info = model_class.from_pretrained(
            location,
            config=config,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            device_map=str(device),
            **options,
        )
    except OSError as e:
        raise weights_error(location, source, e) from None
    except ValueError as e:
        if kind is None:
            raise
        raise ModelFormatError(f"{source} is not {kind}: {first_line(e)}") from None
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ModelFormatError(
            f"{source}: the weights do not match {type(model).__name__}; {len(missing)} tensors are "
            f"missing (e.g. {missing[0]}){hint}"
        )
    return model


def weights_error(location: str, source, error: OSError) -> SelfcorrectError:
    path = Path(location)
    if not path.is_dir():
        from huggingface_hub import is_offline_mode

        if is_offline_mode():
            return _not_found(source, error)
        return ModelFormatError(f"cannot load safetensors weights of {source}: {first_line(error)}")
    names = [p.name for p in path.iterdir()]
    if any(n.endswith(".safetensors") for n in names):
        return ModelFormatError(f"cannot load the weights in {path}: {first_line(error)}")
    if any(n.endswith(PICKLE_SUFFIXES) for n in names):
        return ModelFormatError(
            f"{path} has only pickle weights ({', '.join(n for n in names if n.endswith(PICKLE_SUFFIXES))}); "
            "selfcorrect loads safetensors only. Convert them where you trust the file: load the model "
            "and save_pretrained(...) it again, which writes safetensors"
        )
    return ModelNotFoundError(f"{path} has no weights (*.safetensors)")


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
