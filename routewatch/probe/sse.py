"""Incremental Server-Sent Events reader.

Bytes go in as they arrive, each chunk with the monotonic time it was read;
complete events come out stamped with the arrival time of the chunk that
completed them. It knows nothing about OpenAI: only the SSE wire format
(fields, comments, CR/LF/CRLF line ends, multi-line ``data``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A line longer than this is a broken or hostile upstream, not a completion
# chunk (a few hundred bytes; even a whole 32k-token answer sent as one event
# fits); refusing it bounds the prober's memory and CPU per stream.
MAX_LINE_BYTES = 256 * 1024
# The same bound for one event's data lines together: many short lines with
# no blank line to end the event must not pile up either. It is also what a
# consumer parses at once: JSON of this size can become ~25 times as many
# bytes of Python objects and take tens of milliseconds to decode. With both
# bounds a reader holds at most max_line_bytes of unfinished line,
# max_event_bytes of unfinished event, and the events one fed chunk completes.
MAX_EVENT_BYTES = 256 * 1024

_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSEProtocolError(Exception):
    """The byte stream is not valid SSE (over-long line or event, invalid UTF-8)."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its ``data`` lines joined by newlines."""

    data: str
    t_ns: int  # arrival time of the chunk whose bytes completed the event
    offset: int  # byte offset in the stream of the event's first data line
    event: str | None = None


class SSEReader:
    """Feed bytes with ``feed``; it returns the events they complete."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max_line = max_line_bytes
        self._max_event = max_event_bytes
        self._buf = bytearray()
        self._data: list[bytes] = []
        self._data_bytes = 0  # size of the pending event's data lines
        self._data_offset = 0  # stream offset of the pending event's first data line
        self._event: str | None = None
        self._consumed = 0  # stream bytes already dropped from the front of _buf
        # A chunk that ended in CR may continue with the LF of the same CRLF.
        self._skip_lf = False
        self.comments = 0  # keep-alive and other comment lines seen

    def feed(self, chunk: bytes, t_ns: int) -> list[SSEEvent]:
        """Consume ``chunk`` (read at ``t_ns``); return the completed events."""
        if not chunk:
            return []
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
            self._consumed += 1
        self._skip_lf = False
        # What is left in the buffer holds no line end: search only the new bytes.
        scan_from = len(self._buf)
        self._buf += chunk
        events: list[SSEEvent] = []
        pos = 0
        buf = self._buf
        while True:
            m = _LINE_END.search(buf, max(pos, scan_from))
            if m is None:
                break
            if m.group() == b"\r" and m.end() == len(buf):
                # Could be the first half of CRLF: treat as a line end now
                # and swallow a leading LF in the next chunk.
                self._skip_lf = True
            line = bytes(buf[pos : m.start()])
            if len(line) > self._max_line:
                raise SSEProtocolError(f"SSE line longer than {self._max_line} bytes")
            event = self._line(line, t_ns, self._consumed + pos)
            pos = m.end()
            if event is not None:
                events.append(event)
        del buf[:pos]
        self._consumed += pos
        if len(buf) > self._max_line:
            raise SSEProtocolError(f"SSE line longer than {self._max_line} bytes")
        return events

    def _line(self, line: bytes, t_ns: int, offset: int) -> SSEEvent | None:
        if not line:
            return self._dispatch(t_ns)
        if line[:1] == b":":
            self.comments += 1
            return None
        field, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            if not self._data:
                self._data_offset = offset
            self._data_bytes += len(value) + 1
            if self._data_bytes > self._max_event:
                raise SSEProtocolError(f"SSE event longer than {self._max_event} bytes")
            self._data.append(value)
        elif field == b"event":
            self._event = _decode(value)
        # id and retry carry nothing a probe needs; unknown fields are ignored
        # as the SSE specification says.
        return None

    def _dispatch(self, t_ns: int) -> SSEEvent | None:
        if not self._data:
            self._event = None
            return None
        data = _decode(b"\n".join(self._data))
        event = SSEEvent(data=data, t_ns=t_ns, offset=self._data_offset, event=self._event)
        self._data = []
        self._data_bytes = 0
        self._event = None
        return event


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SSEProtocolError(f"invalid UTF-8 in SSE stream at byte {exc.start}") from None
