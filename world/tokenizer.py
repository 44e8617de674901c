"""The world tokenizer: a CLIP BPE tokenizer whose vocabulary is the world's words.

Every world word is one token; any other lower-case word still tokenizes (into characters), so
user prompts outside the vocabulary never fail. transformers v5 takes merges in memory as tuples.
"""

from __future__ import annotations

import string
from pathlib import Path

from transformers import CLIPTokenizer

from world.vocab import all_words

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77


def _symbols(word: str) -> tuple[str, ...]:
    return tuple(word[:-1]) + (word[-1] + "</w>",)


def _apply_merges(symbols: tuple[str, ...], ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """CLIP's BPE: repeatedly merge the lowest-ranked adjacent pair."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    return tuple(symbols)


def world_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A vocabulary (token → id) and merge list in which every world word is a single token."""
    chars = list(string.ascii_lowercase + string.digits + ",.'-")
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in all_words():
        # Keep merging whatever BPE leaves until the word is one symbol; each merge made becomes a token.
        while len(pieces := _apply_merges(_symbols(word), ranks)) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            tokens.append(pair[0] + pair[1])
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, merges


def build_world_tokenizer(save_dir: str | Path | None = None) -> CLIPTokenizer:
    vocab, merges = world_vocab_and_merges()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, unk_token=EOS, bos_token=BOS, eos_token=EOS,
                              pad_token=EOS, model_max_length=MAX_LENGTH)
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
    return tokenizer
