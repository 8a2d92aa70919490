"""The SSE reader: byte-exact events whatever the chunking."""

import pytest

from routewatch.probe.sse import SSEProtocolError, SSEReader

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
