"""Reading ``routewatch db status`` text the way an operator does: by the label of each line."""

from __future__ import annotations


def status_lines(text: str) -> dict[str, list[str]]:
    """``db status`` lines by their label (the text before the first colon), each value stripped, in order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        label, _, value = line.partition(":")
        out.setdefault(label.strip(), []).append(value.strip())
    return out
