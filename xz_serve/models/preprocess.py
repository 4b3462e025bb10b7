"""Text preprocessing shared by training and serving: symbols the tokenizer cannot read become words.

MiniLM's WordPiece vocabulary has almost no emoji, so "stuck ☹️" reaches the encoder as
"stuck [UNK]" (6.8% of the TweetEval training tweets hold such a symbol), losing the strongest
sentiment cue in the text. Unicode's own character names ("WHITE FROWNING FACE") carry that cue
in words the vocabulary has. No dependency: the names come from ``unicodedata``.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

PREPROCESS_VERSION = "symbol-names-v1"
_SYMBOL_CATEGORIES = {"So", "Sk"}  # other symbols (emoji, dingbats) and modifier symbols
_DROP = {"\ufe0f", "\ufe0e", "\u200d"}  # variation selectors and the zero-width joiner


@lru_cache(maxsize=4096)
def _spell(char: str) -> str:
    if char in _DROP:
        return " "
    if unicodedata.category(char) in _SYMBOL_CATEGORIES:
        name = unicodedata.name(char, "")
        return f" {name.lower()} " if name else " "
    return char


def spell_symbols(text: str) -> str:
    """``text`` with each emoji or other symbol replaced by its lower-cased Unicode name."""
    if text.isascii():
        return text
    return "".join(_spell(char) for char in text)
