"""Embeddable SVG badges, flat like shields.io's: a grey label on the left, a coloured value on the right.

Pure functions, text in, SVG document out. Text widths come from a
per-character table of Verdana at 11 px (:data:`CHAR_WIDTHS`), so no font is
loaded or shipped; each ``<text>`` also carries ``textLength``, so a viewer
whose fallback font is wider or narrower still fits the text in its box.
Every piece of text is XML-escaped (:func:`xml_text`).
"""

from __future__ import annotations

import hashlib
import re
from xml.sax.saxutils import escape

from routewatch.aggregator.model_state import State
from routewatch.aggregator.publish.display import MISSING, format_price, format_ttft
from routewatch.aggregator.publish.status_view import RouteFigures

__all__ = [
    "CHAR_WIDTHS",
    "COLORS",
    "message_badge",
    "model_badge",
    "model_badge_value",
    "render_badge",
    "status_badge",
    "text_width",
    "xml_text",
]

HEIGHT = 20
PADDING = 5  # px each side of a text, as shields.io's flat style
FONT = "Verdana,Geneva,DejaVu Sans,sans-serif"
FONT_SIZE = 11

LABEL_COLOR = "#555"
COLORS = {
    State.OPERATIONAL: "#4c1",
    State.DEGRADED: "#dfb317",
    State.DOWN: "#e05d44",
    State.UNKNOWN: "#9f9f9f",
}
INFO_COLOR = "#007ec6"  # a model badge without status (no SLO): information, not health
GREY = "#9f9f9f"

# Advance widths of Verdana at 11 px, in px, for printable ASCII (shields.io measures the same font).
CHAR_WIDTHS: dict[str, float] = {
    " ": 3.87,
    "!": 4.33,
    '"': 5.05,
    "#": 9.0,
    "$": 6.99,
    "%": 11.84,
    "&": 7.99,
    "'": 2.95,
    "(": 4.99,
    ")": 4.99,
    "*": 6.99,
    "+": 9.0,
    ",": 4.0,
    "-": 4.99,
    ".": 4.0,
    "/": 4.99,
    **dict.fromkeys("0123456789", 6.99),
    ":": 4.99,
    ";": 4.99,
    "<": 9.0,
    "=": 9.0,
    ">": 9.0,
    "?": 6.0,
    "@": 11.0,
    "A": 7.52,
    "B": 7.54,
    "C": 7.68,
    "D": 8.48,
    "E": 6.96,
    "F": 6.32,
    "G": 8.53,
    "H": 8.27,
    "I": 4.61,
    "J": 5.0,
    "K": 7.62,
    "L": 6.12,
    "M": 9.27,
    "N": 8.23,
    "O": 8.66,
    "P": 6.63,
    "Q": 8.66,
    "R": 7.65,
    "S": 7.52,
    "T": 6.78,
    "U": 8.05,
    "V": 7.52,
    "W": 10.88,
    "X": 7.54,
    "Y": 6.77,
    "Z": 7.54,
    "[": 4.99,
    "\\": 4.99,
    "]": 4.99,
    "^": 9.0,
    "_": 6.99,
    "`": 6.99,
    "a": 6.61,
    "b": 6.85,
    "c": 5.73,
    "d": 6.85,
    "e": 6.55,
    "f": 3.87,
    "g": 6.85,
    "h": 6.96,
    "i": 3.02,
    "j": 3.79,
    "k": 6.51,
    "l": 3.02,
    "m": 10.71,
    "n": 6.96,
    "o": 6.68,
    "p": 6.85,
    "q": 6.85,
    "r": 4.69,
    "s": 5.73,
    "t": 4.33,
    "u": 6.96,
    "v": 6.51,
    "w": 8.98,
    "x": 6.51,
    "y": 6.51,
    "z": 5.78,
    "{": 6.98,
    "|": 4.99,
    "}": 6.98,
    "~": 9.0,
    MISSING: 11.0,
    "·": 4.0,
}
# Anything else (accents, CJK): a wide guess, so text overflows into padding rather than off the badge.
DEFAULT_WIDTH = 8.0

# Characters XML 1.0 forbids even as references; a model id could hold one.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_text(text: str) -> str:
    """``text`` for SVG text or an attribute value: escaped, characters XML forbids replaced by U+FFFD."""
    return escape(_NOT_XML.sub("\ufffd", text), {'"': "&quot;", "'": "&apos;"})


def text_width(text: str) -> float:
    """Estimated width of ``text`` in px at 11 px Verdana."""
    return sum(CHAR_WIDTHS.get(c, DEFAULT_WIDTH) for c in text)


def render_badge(label: str, value: str, color: str, *, title: str | None = None) -> str:
    """A flat two-part badge; ``title`` is the tooltip and accessible name (default ``label: value``)."""
    name = title if title is not None else f"{label}: {value}"
    label_w, value_w = _box(label), _box(value)
    width = label_w + value_w
    # Element ids unique per content: several inline badges on one page must not share a clipPath.
    uid = hashlib.sha1(f"{label}\0{value}\0{color}".encode(), usedforsecurity=False).hexdigest()[:8]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(width)}" height="{HEIGHT}"'
        f' viewBox="0 0 {_n(width)} {HEIGHT}" role="img" aria-label="{xml_text(name)}">'
        f"<title>{xml_text(name)}</title>"
        f'<linearGradient id="s{uid}" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/>'
        '<stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r{uid}"><rect width="{_n(width)}" height="{HEIGHT}" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r{uid})"><rect width="{_n(label_w)}" height="{HEIGHT}" fill="{LABEL_COLOR}"/>'
        f'<rect x="{_n(label_w)}" width="{_n(value_w)}" height="{HEIGHT}" fill="{xml_text(color)}"/>'
        f'<rect width="{_n(width)}" height="{HEIGHT}" fill="url(#s{uid})"/></g>'
        f'<g fill="#fff" text-anchor="middle" font-family="{FONT}" font-size="{FONT_SIZE}"'
        ' text-rendering="geometricPrecision">'
        f"{_text(label, label_w / 2)}{_text(value, label_w + value_w / 2)}</g></svg>"
    )


def _box(text: str) -> float:
    return round(text_width(text), 1) + 2 * PADDING


def _text(text: str, center: float) -> str:
    length = _n(round(text_width(text), 1))
    body = xml_text(text)
    # A dark copy one pixel lower is the flat style's shadow; it is decoration, hidden from readers.
    return (
        f'<text aria-hidden="true" x="{_n(center)}" y="15" fill="#010101" fill-opacity=".3"'
        f' textLength="{length}" lengthAdjust="spacingAndGlyphs">{body}</text>'
        f'<text x="{_n(center)}" y="14" textLength="{length}" lengthAdjust="spacingAndGlyphs">{body}</text>'
    )


def _n(value: float) -> str:
    # Shortest exact form: 12.0 -> "12", 12.25 -> "12.25".
    return f"{round(value, 2):g}"


def model_badge_value(route: RouteFigures) -> str:
    """The right-hand text: ``$0.10/M in · p50 412 ms · via orcarouter`` (price only where configured)."""
    parts = []
    if route.input_price is not None:
        parts.append(f"{format_price(route.input_price)}/M in")
    parts.append(f"p50 {format_ttft(route.ttft_p50_ms)}")
    parts.append(f"via {route.router}")
    return " · ".join(parts)


def model_badge(model: str, route: RouteFigures, state: State | None, window: str | None) -> str:
    """A model's embed badge: its id, input price, p50 TTFT and router, coloured by its state.

    ``state`` None (status not enabled or not computed) colours it blue, as information.
    """
    price = f"{format_price(route.input_price)} per 1M input tokens, " if route.input_price is not None else ""
    over = f" over {window}" if window else ""
    status = f", {state.value}" if state is not None else ""
    # The answer's first token in the title only: the badge's own text stays short.
    answer = f", p50 TTFAT {format_ttft(route.ttfat_p50_ms)}" if route.ttfat_p50_ms is not None else ""
    title = f"{model}: {price}p50 TTFT {format_ttft(route.ttft_p50_ms)}{answer}{over}, via {route.router}{status}"
    color = COLORS[state] if state is not None else INFO_COLOR
    return render_badge(model, model_badge_value(route), color, title=title)


def status_badge(label: str, state: State) -> str:
    """``status | operational`` (or a model id as label), coloured by ``state``."""
    return render_badge(label, state.value, COLORS[state])


def message_badge(label: str, message: str, color: str = GREY) -> str:
    """A badge that explains why there are no figures, e.g. ``openai/x | unknown model``."""
    return render_badge(label, message, color)
