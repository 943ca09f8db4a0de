"""TLDR: a token-level reward model on a VLM backbone, and caption correction from its flags.

TLDR (Fu et al., "TLDR: Token-Level Detective Reward Model for Large Vision Language Models",
ICLR 2025; notes/anchor-critics.md, section c) gives every token of a response to (image, prompt)
a probability of being correct: the VLM reads image, prompt and response in one forward pass, and
a shared head on each response token's last hidden state, followed by a sigmoid, says whether that
token is right. A response is wrong when any token is flagged (reward below the threshold, 0.5 in
the paper), which is also what localises the error for a correction.

**Architecture here.** The backbone is any :class:`~selfcorrect.vision.vlm.VLM`, *frozen*; the
head (:class:`TokenHead`) is a linear layer (TLDR's, D + 1 parameters) or a small MLP on

* ``"hidden"``: the last hidden state (after the final norm, what the LM head reads) at the
  token's own position, which has seen the image, the prompt and the response up to and
  including the token: TLDR's input; or
* ``"hidden+logprob"`` (the default): the same plus three numbers the backbone's LM head gives
  for free in the same pass: log p(token | everything before it), the log-probability of the most
  likely token there, and the entropy of that distribution. A linear head on the hidden state at
  token k cannot compute how surprising token k was (that is a product of the hidden state
  *before* k and the token's output embedding); with a frozen backbone this is the cheapest way to
  give the head the VLM's own doubt. The training script records the ablation.

and, with ``ahead=k`` (2 in the training profiles), the same features of the next ``k`` tokens of the
response (:func:`look_ahead`). The backbone is causal, so its state at a token has not read what
follows: at the colour word of a swapped binding ("a *blue* square and a red circle") it has not
yet seen which shape the colour belongs to. TLDR's backbone is causal too but fine-tuned; ours is
frozen, and the window is how the head reads the rest of the phrase. Held-out token AUROC on the
run-9 world VLM's features: 0.868 with the token's own features, 0.905 with the next 2 tokens'
(the best window on val; 1-5 all give 0.896-0.905: ``benchmarks/results/tldr_look_ahead.md``).

TLDR fine-tunes the backbone with LoRA (r=512); we freeze it, so that the backbone's features can
be cached once per example and only the head is trained (minutes on a CPU), and so that the
shipped weights are the head alone (400 KB in fp16) plus the name of the backbone folder.

**One forward pass per batch, each image encoded once.** :func:`response_states` renders
``(image, prompt)`` through the VLM's chat template with its generation prompt, appends the
response's tokens (tokenized on their own, without special tokens, exactly as
:meth:`VLM.score <selfcorrect.vision.vlm.VLM.score>` tokenizes continuations, which for the world
VLM are the tokens it was trained to emit) and runs the backbone once; images shared by several
rows are encoded once (the VLM's deduplication). It uses the VLM's input-building internals
(``_normalise``, ``_render``, ``_prepare``, ``_batch``), because the VLM has no public method for
hidden states yet.

**Outputs** are :class:`~selfcorrect.critics.verdicts.TokenVerdict`: the response's tokens as text
pieces (``response[start:end]`` by the tokenizer's offsets), the per-token reward P(correct), the
threshold, and the flagged character spans (consecutive flagged tokens merged, surrounding spaces
trimmed).

**Correction** (:func:`correct_caption`): truncate the response before its first flagged token
and let a VLM regenerate from there, with the flagged token banned at that position (greedy
decoding from the same prefix would otherwise write the same token again); or (``mode="fix"``)
TLDR's own self-correction prompt, which lists the flagged words as hints
(:data:`~selfcorrect.critics.prompts.FIX_CAPTION`, a task the world VLM was trained on).

Example::

    critic = TldrCritic.from_pretrained()                       # selfcorrect/weights/tldr-head
    verdict = critic.reward_tokens(image, "Describe the image.", "a red circle left of a square")
    verdict.rewards, verdict.spans, verdict.response_correct
    fixed = correct_caption(critic, critic.vlm, image, "Describe the image.", caption)
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

import selfcorrect
from selfcorrect.critics import prompts as P
from selfcorrect.critics.verdicts import TokenVerdict
from selfcorrect.errors import SelfcorrectError

HEAD_DIR = Path(selfcorrect.__file__).resolve().parent / "weights" / "tldr-head"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "head.safetensors"
FORMAT = "selfcorrect-tldr-head"
# Feature sets of the head and how many numbers they add to the hidden state.
FEATURES: dict[str, int] = {"hidden": 0, "hidden+logprob": 3}
DEFAULT_FEATURES = "hidden+logprob"
THRESHOLD = 0.5  # TLDR's
CORRECTION_MODES = ("regenerate", "fix")
DEFAULT_MAX_NEW_TOKENS = 64


class TldrInputError(SelfcorrectError, ValueError):
    """Unusable input to the token critic: an empty response, mismatched lengths."""


@dataclass
class ResponseStates:
    """What the backbone says about each token of one response.

    Attributes:
        token_ids: the response's ``n`` token ids.
        offsets: per token its character span ``(start, end)`` in the response.
        hidden: ``(n, D)`` float32, the last hidden state at each response token.
        logprob: ``(n, 3)`` float32, per token ``[log p(token), max log p, entropy]`` of the
            backbone's next-token distribution at the position that predicts it.
    """

    token_ids: list[int]
    offsets: list[tuple[int, int]]
    hidden: torch.Tensor
    logprob: torch.Tensor


def tokenize_response(tokenizer, text: str, index: int = 0) -> tuple[list[int], list[tuple[int, int]]]:
    """A response's token ids (no special tokens) and each token's character span.

    Fast tokenizers give the spans; for others they are found by decoding growing prefixes.

    Raises:
        TldrInputError: the response is empty (or only whitespace): there is nothing to reward.
    """
    if not isinstance(text, str) or not text.strip():
        raise TldrInputError(
            f"response {index} is empty: a token-level critic needs at least one token to reward"
        )
    if getattr(tokenizer, "is_fast", False):
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(encoding["input_ids"]), [tuple(o) for o in encoding["offset_mapping"]]
    else:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        offsets, start = [], 0
        for k in range(len(ids)):
            end = min(len(text), len(tokenizer.decode(ids[: k + 1], skip_special_tokens=True)))
            offsets.append((start, max(start, end)))
            start = max(start, end)
    if not ids:
        raise TldrInputError(f"response {index} is empty once tokenized")
    return ids, offsets


def response_states(vlm, images, prompts: Sequence, responses: Sequence[str], *, batch_size: int = 8):
    """Run the backbone once over (image, prompt, response) triples; see :class:`ResponseStates`.

    Args:
        vlm: a :class:`~selfcorrect.vision.vlm.VLM`.
        images: one image (or list of images) per prompt, or one image for all (as for
            :meth:`VLM.chat <selfcorrect.vision.vlm.VLM.chat>`).
        prompts: B prompts (strings or chat conversations), rendered with the generation prompt.
        responses: B responses, the assistant's answers to score token by token.
        batch_size: rows per forward pass (and images per vision-tower call).

    Returns:
        B :class:`ResponseStates`, on the CPU.
    """
    if isinstance(responses, str) or len(responses) != len(prompts):
        raise TldrInputError(f"give one response per prompt; got {len(responses)} for {len(prompts)} prompts")
    tokenized = [tokenize_response(vlm.tokenizer, r, i) for i, r in enumerate(responses)]
    base = vlm.model.base_model  # the model without its LM head: returns the normed last hidden state
    lm_head = vlm.model.get_output_embeddings()
    states: list[ResponseStates] = []
    batches = vlm.prefixed_inputs(images, list(prompts), [ids for ids, _ in tokenized], batch_size=batch_size)
    with torch.inference_mode():
        for chunk, inputs, prompt_len in batches:
            hidden = base(**inputs, use_cache=False).last_hidden_state  # (R, prompt_len + longest, D)
            for i, b in enumerate(chunk):
                ids, offsets = tokenized[b]
                n = len(ids)
                h = hidden[
                    i, prompt_len - 1 : prompt_len + n
                ]  # (n + 1, D): the last prompt position, then the tokens
                logp = torch.log_softmax(
                    lm_head(h[:-1]).float(), dim=-1
                )  # (n, V): position t predicts token t
                token = logp.gather(1, torch.tensor(ids, device=logp.device)[:, None])[:, 0]
                entropy = -(logp.exp() * logp).sum(-1)
                extra = torch.stack([token, logp.max(-1).values, entropy], dim=-1)  # (n, 3)
                states.append(ResponseStates(ids, offsets, h[1:].float().cpu(), extra.cpu()))
    return states


def features_of(states: ResponseStates, features: str, ahead: int = 0) -> torch.Tensor:
    """The head's input for one response: ``(n, F)`` float32 with ``F = (D + FEATURES[features])
    * (1 + ahead) + ahead`` (see :func:`look_ahead`)."""
    if features not in FEATURES:
        raise ValueError(f"unknown feature set {features!r}; choose one of {', '.join(FEATURES)}")
    x = states.hidden if features == "hidden" else torch.cat([states.hidden, states.logprob], dim=-1)
    return look_ahead(x, [len(x)], ahead)


def look_ahead(x: torch.Tensor, lengths: Sequence[int], ahead: int) -> torch.Tensor:
    """Each token's features followed by those of the next ``ahead`` tokens of its response.

    A causal backbone's state at a token has not read what follows it: at ``left`` in "a red
    circle left of a blue square" it cannot know which object the relation points to, so a head
    on that state alone cannot tell ``left`` from ``right``. The window lets the per-token head
    read the following tokens' states too (the response is whole when it is rewarded).

    Args:
        x: ``(T, F)`` features of R responses' tokens, concatenated.
        lengths: the R responses' token counts (summing to T).
        ahead: how many following tokens; 0 returns ``x``.

    Returns:
        ``(T, F * (1 + ahead) + ahead)``: ``[x_t, x_{t+1}, ..., x_{t+ahead}, m_1, ..., m_ahead]``,
        where a following token past its response's end is zeros and its flag ``m_j`` is 0 (1
        otherwise).
    """
    if ahead == 0:
        return x
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    if int(lengths.sum()) != x.shape[0]:
        raise ValueError(f"lengths sum to {int(lengths.sum())}, but there are {x.shape[0]} tokens")
    ends = torch.repeat_interleave(torch.cumsum(lengths, 0), lengths)  # (T,)
    index = torch.arange(x.shape[0])
    windows, flags = [x], []
    for j in range(1, ahead + 1):
        inside = index + j < ends  # (T,)
        shifted = torch.zeros_like(x)
        shifted[inside] = x[(index + j)[inside]]
        windows.append(shifted)
        flags.append(inside.to(x.dtype))
    return torch.cat([*windows, torch.stack(flags, dim=-1)], dim=-1)


class TokenHead(torch.nn.Module):
    """The shared per-token head: standardise the features, then a linear layer or a small MLP.

    Args:
        hidden_size: the backbone's hidden size D.
        features: a key of :data:`FEATURES`.
        mlp: width of one hidden layer (GELU); 0 for TLDR's linear head.
        ahead: how many following tokens' features each token's input also has
            (:func:`look_ahead`; 0 is TLDR's head, which reads the token's own state only).

    ``forward(x)``: ``x`` of shape ``(..., in_features)``, ``in_features = (D + FEATURES[features])
    * (1 + ahead) + ahead`` -> logits of P(token correct), shape ``(...)``. The standardisation
    (``mean``, ``scale`` buffers) is set from the training features by :meth:`set_normalisation`
    and saved with the weights.
    """

    def __init__(self, hidden_size: int, features: str = DEFAULT_FEATURES, mlp: int = 0, ahead: int = 0):
        super().__init__()
        if features not in FEATURES:
            raise ValueError(f"unknown feature set {features!r}; choose one of {', '.join(FEATURES)}")
        if ahead < 0:
            raise ValueError(f"ahead must be at least 0, got {ahead}")
        self.hidden_size, self.features, self.mlp, self.ahead = hidden_size, features, mlp, ahead
        self.in_features = (hidden_size + FEATURES[features]) * (1 + ahead) + ahead
        self.register_buffer("mean", torch.zeros(self.in_features))
        self.register_buffer("scale", torch.ones(self.in_features))
        if mlp:
            self.net = torch.nn.Sequential(
                torch.nn.Linear(self.in_features, mlp), torch.nn.GELU(), torch.nn.Linear(mlp, 1)
            )
        else:
            self.net = torch.nn.Linear(self.in_features, 1)

    def set_normalisation(self, x: torch.Tensor) -> None:
        """Standardise to the mean and standard deviation of ``x`` ``(N, in_features)``."""
        x = x.float()
        self.mean.copy_(x.mean(0))
        self.scale.copy_(1.0 / x.std(0).clamp(min=1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.float() - self.mean) * self.scale).squeeze(-1)

    def config(self) -> dict:
        return {
            "hidden_size": self.hidden_size,
            "features": self.features,
            "mlp": self.mlp,
            "ahead": self.ahead,
        }


def save_head(
    head: TokenHead, path: str | os.PathLike, *, backbone: str, threshold: float, extra: dict | None = None
):
    """Write ``config.json`` and ``head.safetensors`` into the folder ``path`` (created).

    Args:
        head: the trained head.
        backbone: what :meth:`VLM.from_pretrained <selfcorrect.vision.vlm.VLM.from_pretrained>`
            loads the backbone from (``"world"``, a hub id or a folder; a relative folder is taken
            relative to the current directory, or to the head's folder if it is there).
        threshold: the reward below which a token is flagged.
        extra: more JSON-ready keys for the config (e.g. the training record's headline).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # fp16 like every shipped weight (DESIGN.md); load_head copies it into the float32 head.
    state = {k: v.detach().half().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(path / WEIGHTS_NAME), metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "version": 1,
        "backbone": str(backbone),
        "threshold": threshold,
        **head.config(),
    }
    (path / CONFIG_NAME).write_text(json.dumps({**config, **(extra or {})}, indent=2) + "\n")


def load_head(path: str | os.PathLike) -> tuple[TokenHead, dict]:
    """The head saved by :func:`save_head` in folder ``path`` and its config."""
    from safetensors.torch import load_file

    from selfcorrect.vision.vlm import ModelFormatError, ModelNotFoundError

    path = Path(path)
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise ModelNotFoundError(
            f"no TLDR head at {path} (it needs {CONFIG_NAME} and {WEIGHTS_NAME}); train one with "
            "`python -m selfcorrect.train.tldr --profile cpu --output-dir runs/tldr` and pass "
            "runs/tldr/head, or copy that folder to selfcorrect/weights/tldr-head"
        )
    try:
        config = json.loads((path / CONFIG_NAME).read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"format {config.get('format')!r} is not {FORMAT!r}")
        head = TokenHead(
            int(config["hidden_size"]),
            config["features"],
            int(config.get("mlp", 0)),
            int(config.get("ahead", 0)),  # heads saved before look-ahead existed read their own token only
        )
        head.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise ModelFormatError(f"{path} is not a usable TLDR head: {str(e).splitlines()[0]}") from None
    return head.eval(), config


class TldrCritic:
    """TLDR's token-level reward model: a frozen VLM backbone and a per-token head.

    Args:
        vlm: a :class:`~selfcorrect.vision.vlm.VLM` (the backbone the head was trained on).
        head: a :class:`TokenHead`.
        threshold: a token is flagged when its reward (P(correct)) is below this.
        batch_size: rows per forward pass.
    """

    kinds = frozenset({"tokens"})
    name = "tldr"

    def __init__(self, vlm, head: TokenHead, *, threshold: float = THRESHOLD, batch_size: int = 8):
        from selfcorrect.vision.vlm import ModelFormatError

        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        hidden = vlm.model.config.get_text_config().hidden_size
        if hidden != head.hidden_size:
            raise ModelFormatError(
                f"the head was trained on a backbone of hidden size {head.hidden_size}, but "
                f"{vlm.name} has {hidden}: load the backbone it was trained with"
            )
        self.vlm, self.threshold, self.batch_size = vlm, threshold, batch_size
        self.head = head.to(vlm.device).eval()

    def __repr__(self) -> str:
        return f"TldrCritic({self.vlm!r}, features={self.head.features!r}, threshold={self.threshold})"

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        *,
        vlm=None,
        device: str = "cpu",
        threshold: float | None = None,
        batch_size: int = 8,
    ) -> TldrCritic:
        """Load a head folder and its backbone.

        Args:
            path: a folder written by :func:`save_head` (the training script's
                ``OUTPUT_DIR/head``); default the shipped ``selfcorrect/weights/tldr-head``.
            vlm: the backbone as a VLM object, or None to load the one the config names.
            device: where a backbone loaded here runs.
            threshold: override the head's own (calibrated) threshold.
        """
        from selfcorrect.vision.vlm import VLM

        folder = Path(path) if path is not None else HEAD_DIR
        head, config = load_head(folder)
        if vlm is None:
            backbone = config["backbone"]
            local = folder / backbone
            vlm = VLM.from_pretrained(
                local if backbone != "world" and local.is_dir() else backbone, device=device
            )
        return cls(
            vlm,
            head,
            threshold=config.get("threshold", THRESHOLD) if threshold is None else threshold,
            batch_size=batch_size,
        )

    def reward_tokens(self, image, prompt: str, response: str) -> TokenVerdict:
        """Per-token rewards of ``response`` to ``prompt`` about ``image``."""
        return self.reward_tokens_many([image], [prompt], [response])[0]

    def reward_tokens_many(
        self, images: Sequence, prompts: Sequence, responses: Sequence[str]
    ) -> list[TokenVerdict]:
        """:meth:`reward_tokens` for B triples, batched; an image shared by rows is encoded once."""
        if isinstance(images, (str, bytes)) or len(images) != len(prompts):
            raise TldrInputError(
                f"give one image per prompt; got {len(images)} images for {len(prompts)} prompts"
            )
        states = response_states(
            self.vlm, list(images), list(prompts), list(responses), batch_size=self.batch_size
        )
        verdicts = []
        with torch.inference_mode():
            for response, s in zip(responses, states):
                x = features_of(s, self.head.features, self.head.ahead).to(self.vlm.device)
                rewards = torch.sigmoid(self.head(x)).cpu().tolist()  # (n,)
                verdicts.append(self._verdict(response, s.offsets, rewards))
        return verdicts

    def _verdict(self, response: str, offsets, rewards: list[float]) -> TokenVerdict:
        flagged = [r < self.threshold for r in rewards]
        return TokenVerdict(
            tokens=[response[s:e] for s, e in offsets],
            rewards=[min(max(float(r), 0.0), 1.0) for r in rewards],
            threshold=self.threshold,
            spans=flagged_spans(response, offsets, flagged),
            critic=self.name,
        )


def flagged_spans(
    text: str, offsets: Sequence[tuple[int, int]], flagged: Sequence[bool]
) -> list[tuple[int, int]]:
    """Character spans of runs of flagged tokens, with surrounding whitespace trimmed.

    Example: text ``"a red circle"``, offsets ``[(0, 1), (1, 5), (5, 12)]``, flags
    ``[False, True, True]`` -> ``[(2, 12)]``.
    """
    spans: list[tuple[int, int]] = []
    previous = False
    for (start, end), bad in zip(offsets, flagged):
        if bad and previous:  # a run of consecutive flagged tokens is one span
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        elif bad:
            spans.append((start, end))
        previous = bad
    out = []
    for start, end in spans:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start < end:
            out.append((start, end))
    return out


# ---------------------------------------------------------------------------------------------
# Correction


def correct_caption(
    critic,
    vlm,
    image,
    prompt: str,
    response: str,
    *,
    mode: str = "regenerate",
    verdict: TokenVerdict | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> str:
    """Correct a response with the token critic's flags; returned unchanged when nothing is flagged.

    Args:
        critic: a token critic (``reward_tokens``), e.g. :class:`TldrCritic`.
        vlm: the VLM that rewrites (it may differ from the critic's backbone).
        image, prompt, response: what was asked and answered.
        mode: ``"regenerate"``: keep the response up to its first flagged token and let ``vlm``
            continue it greedily, the flagged token banned at that position (the prefix is
            re-tokenized by ``vlm``'s tokenizer, at the token that covers the flagged character);
            ``"fix"``: TLDR's prompt (:data:`~selfcorrect.critics.prompts.FIX_CAPTION`) listing the
            flagged words as hints.
        verdict: the critic's verdict on ``response`` if already computed.
        max_new_tokens: the most tokens generated.

    Returns:
        The corrected response (whitespace stripped).
    """
    if mode not in CORRECTION_MODES:
        raise ValueError(f"mode must be one of {', '.join(CORRECTION_MODES)}, got {mode!r}")
    verdict = verdict if verdict is not None else critic.reward_tokens(image, prompt, response)
    if not verdict.spans:
        return response
    if mode == "fix":
        words = ", ".join(dict.fromkeys(response[s:e] for s, e in verdict.spans))
        [text] = vlm.chat(
            [image], [P.FIX_CAPTION.format(words=words, caption=response)], max_new_tokens=max_new_tokens
        )
        return text.strip()
    cut = verdict.spans[0][0]
    ids, offsets = tokenize_response(vlm.tokenizer, response)
    first = next(k for k, (_, end) in enumerate(offsets) if end > cut)
    return continue_response(
        vlm, image, prompt, ids[:first], banned=ids[first], max_new_tokens=max_new_tokens
    )


def continue_response(
    vlm,
    image,
    prompt,
    prefix_ids: Sequence[int],
    *,
    banned: int | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> str:
    """Greedy continuation of an assistant answer that starts with ``prefix_ids``.

    The prompt is rendered with the chat template's generation prompt and the prefix tokens follow
    it, as if the model had written them; ``banned`` (a token id) cannot be the first new token.

    Returns:
        The whole answer (prefix and continuation) decoded, special tokens removed, stripped.
    """
    from transformers import LogitsProcessor, LogitsProcessorList

    class BanFirst(LogitsProcessor):
        def __init__(self, token: int, at: int):
            self.token, self.at = token, at

        def __call__(self, input_ids, scores):
            if input_ids.shape[1] == self.at:
                scores[:, self.token] = float("-inf")
            return scores

    [(_, inputs, _)] = vlm.prefixed_inputs(
        [image], [prompt], [prefix_ids], batch_size=1, extra=[max_new_tokens]
    )
    length = inputs["input_ids"].shape[1]
    config = copy.deepcopy(vlm.model.generation_config)
    config.update(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=vlm.pad_token_id)
    config.update(top_k=None, temperature=None, top_p=None)
    processors = LogitsProcessorList([BanFirst(banned, length)] if banned is not None else [])
    with torch.inference_mode():
        generated = vlm.model.generate(**inputs, generation_config=config, logits_processor=processors)
    new = generated[0, length:].tolist()
    return vlm.tokenizer.decode(list(prefix_ids) + new, skip_special_tokens=True).strip()
