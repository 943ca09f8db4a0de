"""A small CLIP BPE tokenizer for the embedded world's models.

The real CLIP vocabulary has 49,408 tokens; an embedding table that size would be most of a tiny
model's weights and almost all of it unused by the world's ~100 words. So we build a
:class:`transformers.CLIPTokenizer` with the same byte-level BPE scheme but a tiny merge table:
every world word becomes one token, and any other text still tokenizes (into single bytes), so the
tokenizer is an ordinary CLIP tokenizer that plain diffusers / transformers load and run.
"""

from __future__ import annotations

from functools import cache

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
END_OF_WORD = "</w>"
MAX_LENGTH = 32  # world prompts are at most ~25 words; CLIP's 77 would only add padding


@cache
def _byte_alphabet() -> tuple[str, ...]:
    # The 256 printable characters byte-level BPE (GPT-2 / CLIP) works over, in a fixed order.
    from tokenizers import pre_tokenizers

    return tuple(sorted(pre_tokenizers.ByteLevel.alphabet()))


def build_vocab_and_merges(words) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges that turn each of ``words`` into a single token.

    Args:
        words: lower-case ASCII words.

    Returns:
        ``(vocab, merges)``: vocab maps token -> id (specials, then bytes, then bytes + ``</w>``,
        then the merged pieces); merges are the BPE merge rules in priority order.
    """
    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    for ch in _byte_alphabet():
        vocab[ch] = len(vocab)
    for ch in _byte_alphabet():
        vocab[ch + END_OF_WORD] = len(vocab)
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in sorted(set(words)):
        if not word.isascii() or not word.isalpha() or word != word.lower():
            raise ValueError(f"world words are lower-case ASCII letters, got {word!r}")
        # Merge left to right: c+i -> ci, ci+r -> cir, ..., circl+e</w> -> circle</w>.
        pieces = list(word[:-1]) + [word[-1] + END_OF_WORD]
        left = pieces[0]
        for right in pieces[1:]:
            pair = (left, right)
            left = left + right
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            vocab.setdefault(left, len(vocab))
    return vocab, merges


def build_world_tokenizer(words, max_length: int = MAX_LENGTH):
    """A :class:`transformers.CLIPTokenizer` whose vocabulary makes each world word one token."""
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab_and_merges(words)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    tokenizer.model_max_length = max_length
    return tokenizer
