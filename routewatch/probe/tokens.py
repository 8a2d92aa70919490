"""Counting output tokens when the router sends no ``usage``.

No tokenizer matches every model, and the usual BPE libraries download their
vocabularies at run time, which a prober must not depend on. This estimate
splits text the way BPE pre-tokenizers do (a word with its leading space, a
group of up to three digits, or a run of punctuation). Common words are one
token in English BPE vocabularies; long ones are usually rare words split
into pieces of about four characters. Results that use it are flagged
``tokens_estimated``.

``estimate_tokens`` is the definition, on a whole text. ``TokenCounter``
gives the same count from the text's pieces as they stream in, keeping only
the kind and length of the run the last piece ended in: constant memory, and
no pass over the whole answer at the end.
"""

from __future__ import annotations

import re

_PIECES = re.compile(r" ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+|\s+", re.UNICODE)
_WHOLE_WORD_MAX = 10  # letters: longer words count as several pieces
_CHARS_PER_PIECE = 4
_DIGITS_PER_PIECE = 3

# The maximal runs the pieces above are cut from: whitespace and "_" separate
# them, and a run's count depends only on its kind and length.
_RUNS = re.compile(r"(?P<letters>[^\W\d_]+)|(?P<digits>\d+)|(?P<punct>[^\s\w]+)", re.UNICODE)


def estimate_tokens(text: str) -> int:
    """Approximate token count of ``text`` (0 for empty text)."""
    count = 0
    for m in _PIECES.finditer(text):
        stripped = m.group().strip()
        if not stripped:
            continue
        if len(stripped) <= _WHOLE_WORD_MAX:
            count += 1
        else:
            count += -(-len(stripped) // _CHARS_PER_PIECE)
    return count


def _run_tokens(kind: str | None, length: int) -> int:
    """Tokens ``estimate_tokens`` gives one maximal run of ``kind`` (0 for no run)."""
    if kind is None:
        return 0
    if kind == "digits":
        return -(-length // _DIGITS_PER_PIECE)
    return 1 if length <= _WHOLE_WORD_MAX else -(-length // _CHARS_PER_PIECE)


class TokenCounter:
    """``estimate_tokens`` of a text fed in pieces; O(1) memory whatever the text's length."""

    __slots__ = ("_closed", "_kind", "_length")

    def __init__(self) -> None:
        self._closed = 0  # tokens of runs that can no longer grow
        self._kind: str | None = None  # the run the text so far ends in ...
        self._length = 0  # ... and its length: the next piece may extend it

    def feed(self, text: str) -> None:
        """Count ``text``, the next piece of the answer."""
        # Locals, not attributes, in the loop: it runs once per word.
        closed, kind, length = self._closed, self._kind, self._length
        end = 0
        for m in _RUNS.finditer(text):
            start, end = m.span()
            if start == 0 and m.lastgroup == kind:
                length += end  # a word split across two pieces counts once
                continue
            closed += _run_tokens(kind, length)
            kind, length = m.lastgroup, end - start
        if end < len(text):  # the piece ends in a separator: no run is left open
            closed += _run_tokens(kind, length)
            kind, length = None, 0
        self._closed, self._kind, self._length = closed, kind, length

    @property
    def count(self) -> int:
        """Tokens in everything fed so far."""
        return self._closed + _run_tokens(self._kind, self._length)
