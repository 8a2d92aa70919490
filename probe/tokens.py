"""Counting output tokens when the router sends no ``usage``.

No tokenizer matches every model, and the usual BPE libraries download their
vocabularies at run time, which a prober must not depend on. This estimate
splits text the way BPE pre-tokenizers do (a word with its leading space, a
group of up to three digits, or a run of punctuation). Common words are one
token in English BPE vocabularies; long ones are usually rare words split
into pieces of about four characters. Results that use it are flagged
``tokens_estimated``.
"""

from __future__ import annotations

import re

_PIECES = re.compile(r" ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+|\s+", re.UNICODE)
_WHOLE_WORD_MAX = 10  # letters: longer words count as several pieces
_CHARS_PER_PIECE = 4


def estimate_tokens(text: str) -> int:
    """Approximate token count of ``text`` (0 for empty text)."""
    count = 0
    for piece in _PIECES.findall(text):
        stripped = piece.strip()
        if not stripped:
            continue
        if len(stripped) <= _WHOLE_WORD_MAX:
            count += 1
        else:
            count += -(-len(stripped) // _CHARS_PER_PIECE)
    return count
