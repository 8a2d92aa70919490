"""The start tags of an HTML document, and what would make one of them run something.

For the escaping tests: a page that shows router-named text must contain
only the elements it renders itself, so no element may run a script, load
a frame or carry an event handler, whatever the text held.
"""

from __future__ import annotations

from html.parser import HTMLParser

ACTIVE_ELEMENTS = frozenset({"script", "iframe", "object", "embed", "frame", "frameset", "base", "form"})


class _StartTags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def start_tags(markup: str) -> list[tuple[str, dict[str, str]]]:
    """Every start tag of ``markup`` in order, with its attributes (entities decoded)."""
    parser = _StartTags()
    parser.feed(markup)
    parser.close()
    return parser.tags


def active_parts(markup: str) -> list[str]:
    """What in ``markup`` could run: script-like elements, event-handler attributes, javascript: URLs."""
    found = []
    for tag, attrs in start_tags(markup):
        if tag in ACTIVE_ELEMENTS:
            found.append(f"<{tag}>")
        for name, value in attrs.items():
            if name.startswith("on"):
                found.append(f"<{tag} {name}=...>")
            if name in ("href", "src") and value.strip().lower().startswith("javascript:"):
                found.append(f"<{tag} {name}={value[:40]!r}>")
    return found
