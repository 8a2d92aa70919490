"""The SSE reader: byte-exact events whatever the chunking."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routewatch.probe.sse import SSEProtocolError, SSEReader

pytestmark = pytest.mark.unit

STREAM = (
    b": OPENROUTER PROCESSING\n\n"
    b'data: {"a": 1}\n\n'
    b"data: line one\r\ndata: line two\r\n\r\n"
    b"event: note\rdata: cr only\r\r"
    b"data: [DONE]\n\n"
)
EXPECTED = ['{"a": 1}', "line one\nline two", "cr only", "[DONE]"]


def feed_all(chunks: list[bytes]) -> list[str]:
    reader = SSEReader()
    out: list[str] = []
    for i, chunk in enumerate(chunks):
        out.extend(e.data for e in reader.feed(chunk, i))
    return out


def test_whole_stream() -> None:
    reader = SSEReader()
    events = reader.feed(STREAM, 7)
    assert [e.data for e in events] == EXPECTED
    assert [e.event for e in events] == [None, None, "note", None]
    assert all(e.t_ns == 7 for e in events)
    assert reader.comments == 1


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_any_chunking_gives_the_same_events(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert feed_all(chunks) == EXPECTED


def test_every_single_split_point() -> None:
    for cut in range(len(STREAM) + 1):
        assert feed_all([STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut


def test_event_stamped_with_the_chunk_that_completed_it() -> None:
    reader = SSEReader()
    assert reader.feed(b'data: {"x"', 100) == []
    (event,) = reader.feed(b": 1}\n\n", 250)
    assert event.t_ns == 250 and event.data == '{"x": 1}'


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    reader = SSEReader()
    assert reader.feed(b"data: a\r", 1) == []
    (event,) = reader.feed(b"\n\r\n", 2)
    assert event.data == "a"


def test_overlong_line_is_refused() -> None:
    reader = SSEReader(max_line_bytes=64)
    with pytest.raises(SSEProtocolError, match="longer than 64 bytes"):
        reader.feed(b"data: " + b"x" * 100, 1)


def test_invalid_utf8_is_a_protocol_error() -> None:
    with pytest.raises(SSEProtocolError, match="invalid UTF-8"):
        SSEReader().feed(b"data: \xff\xfe\n\n", 1)


def test_field_without_space_and_unknown_fields() -> None:
    events = SSEReader().feed(b"id: 3\nretry: 10\nfoo: bar\ndata:x\n\n", 1)
    assert [e.data for e in events] == ["x"]


def test_offsets_point_at_each_events_first_data_line() -> None:
    events = SSEReader().feed(STREAM, 1)
    for e in events:
        assert STREAM[e.offset :].startswith(b"data:")
    assert events[0].offset == STREAM.index(b'data: {"a"')


def test_empty_chunk_between_cr_and_lf_keeps_one_line_end() -> None:
    reader = SSEReader()
    reader.feed(b"data: a\r", 1)
    reader.feed(b"", 2)
    (event,) = reader.feed(b"\ndata: b\n\n", 3)
    assert event.data == "a\nb"  # one event: the LF completed the CRLF, it was not a blank line


# --- property-based: any split of a valid stream gives the same events ---

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40)
_line_end = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """A valid SSE stream with comments, multi-line data and mixed line ends, and its events."""
    out = bytearray()
    expected: list[str] = []

    def end() -> bytes:
        e = draw(_line_end)
        # CR then LF would read as one CRLF, not two line ends.
        return b"\r\n" if e == b"\n" and out.endswith(b"\r") else e

    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            out += b": " + draw(_text).encode()
            out += end()
        lines = draw(st.lists(_text, min_size=1, max_size=3))
        for line in lines:
            sep = draw(st.sampled_from([b"data: ", b"data:"]))
            if sep == b"data:" and line.startswith(" "):
                sep = b"data: "  # "data:" + " x" would lose the space by the SSE rules
            out += sep + line.encode()
            out += end()
        out += end()
        expected.append("\n".join(lines))
    return bytes(out), expected


def _cuts(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in zip(edges, edges[1:])]


@settings(max_examples=300, deadline=None)
@given(streams(), st.lists(st.integers(0, 10_000), max_size=12))
def test_any_split_gives_the_same_events_and_offsets(stream: tuple[bytes, list[str]], points: list[int]) -> None:
    data, expected = stream
    whole = SSEReader().feed(data, 0)
    reader = SSEReader()
    split: list = []
    for i, chunk in enumerate(_cuts(data, points)):
        split.extend(reader.feed(chunk, i))
    assert [e.data for e in whole] == expected
    assert [(e.data, e.offset) for e in split] == [(e.data, e.offset) for e in whole]


def test_overlong_event_of_short_lines_is_refused() -> None:
    # No line is too long, but the event never ends: its data must not pile up.
    reader = SSEReader(max_line_bytes=64, max_event_bytes=1000)
    with pytest.raises(SSEProtocolError, match="event longer than 1000 bytes"):
        for i in range(100):
            reader.feed(b"data: " + b"x" * 50 + b"\n", i)


def test_default_bounds_refuse_a_never_ending_event() -> None:
    reader = SSEReader()
    line = b"data: " + b"x" * 1000 + b"\n"
    with pytest.raises(SSEProtocolError, match="event longer than"):
        for i in range(200):  # 2 MB of data lines, no blank line
            reader.feed(line * 10, i)
