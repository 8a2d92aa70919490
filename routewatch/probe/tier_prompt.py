"""Generating a prompt at an input-length tier: nonce-seeded words no cache has seen.

A tier prompt's last user message becomes ``[probe <nonce>]``, then words
drawn from a fixed table with a generator seeded by the nonce, then the
message as configured (the instruction). The nonce opens the generated text
and every word depends on it, so two probes differ from the nonce on: a
prefix cache has nothing of one to reuse for the next, and an answer cache
has never seen the question. The same nonce always gives the same
text, so a test can check it.

Every word of the table is three lowercase letters, sent with its leading
space: four characters, one token in English BPE vocabularies, in
``routewatch.probe.tokens.estimate_tokens`` and in the four-characters-a-token
estimate (``config.tiers.estimate_chat_tokens``). Adding n words adds exactly
n tokens to that estimate, so the prompt's estimate is the tier exactly
whenever the instruction fits in it (the loader refuses one that does not).

The cost is one ``randbytes`` call and one ``join`` over a precomputed table:
about 1 ms at 10k tokens, well below the prober's loop-lag threshold.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from routewatch.config.tiers import estimate_chat_tokens

# 256 common three-letter English words: one random byte picks one.
WORDS: tuple[str, ...] = tuple(
    """
    the and for are but not you all any can had her was one our out day get has him his how man new now
    old see two way who boy did its let put say she too use act add age ago air arm art ask bad bag bar
    bed big bit box bus buy car cat cup cut dog dry ear eat egg end eye far fat few fit fly fun gas gun
    guy hat hit hot ice job key kid lab law lay leg lie lot low map may mix net nor oil own pay pen per
    pie pop pot raw red rid row run sad sea set sit six sky son sum sun tax tea ten tie tip top toy try
    war wet win yes yet zoo aid aim bet bid bow cap cow cry dad den dig dot due fan fee fix fog fox fur
    gap hay hen hip hop hug ink jam jar jaw joy kit lap lip log mad mat mud nap nut oak odd pad pan pet
    pig pin pit pub rat rib rim rod rug saw sew shy sin sip ski spa spy tab tag tan tap tin toe ton tub
    van vet wax web wig wit yam zip ash bay bee bin bog bud bun cab cod cot cub dam dew dim dip doe dug
    dye eel elf elk elm era eve fig fin gem gum hut ivy jet jog kin lid mob mop nod oar orb owl pal paw
    pea peg pod pun pup ram
    """.split()
)
_SPACED: tuple[str, ...] = tuple(" " + w for w in WORDS)


def filler(nonce: str, words: int) -> str:
    """``words`` words (each with its leading space) drawn with a generator seeded by ``nonce``."""
    # A str seed is hashed with SHA-512: the same text in every process, whatever PYTHONHASHSEED.
    picks = random.Random(nonce).randbytes(max(words, 0))
    return "".join(map(_SPACED.__getitem__, picks))


def tier_messages(messages: Sequence[Mapping[str, str]], tokens: int, nonce: str) -> list[dict[str, str]]:
    """``messages`` with the last one opened by the nonce tag and the words that bring the chat to ``tokens``.

    The estimate (``estimate_chat_tokens``) of the result is ``tokens`` exactly
    when the messages with the tag fit in it; otherwise no word is added.
    """
    out = [dict(m) for m in messages]
    tag = f"[probe {nonce}]"
    instruction = out[-1]["content"]
    contents = [m["content"] for m in out[:-1]] + [f"{tag}\n\n{instruction}"]
    words = tokens - estimate_chat_tokens(contents)
    out[-1]["content"] = f"{tag}{filler(nonce, words)}\n\n{instruction}"
    return out
