"""The local append-only spool: probe results on disk until their destination has them.

Every completed result is appended here before it is sent on (to the
database, or to a central routewatch over HTTPS); the delivery loop
(``routewatch/delivery/spooled.py``) confirms positions once they are stored,
and after a crash or an outage everything not yet confirmed is read back in
order. Replays may repeat results (every destination stores by probe id, so a
repeat is skipped) but must never drop one.

Layout: a directory of segment files ``00000001.spool``, ``00000002.spool``, ...
appended in order. A segment holds whole records, each

    magic (2 bytes) | length (uint32 LE) | crc32 of payload (uint32 LE) | payload

where the payload is the compact JSON of one result (:func:`encode_result`).
Segment files are only ever appended to, and deleted once confirmed; the one
rewrite is truncating a torn tail of the last segment when the spool is opened.
Once everything in the segment being appended to is confirmed, it is rotated
away (past a small size) so that a caught-up spool holds next to nothing.

A reader never crashes on a bad spool: a torn or corrupt record is logged as
a WARNING naming the file and offset, and skipped. After a corrupt record the
reader resyncs on the next intact one (magic, then a length and CRC that
verify), so damage costs the records it touches, not the rest of the segment.

Threading: :class:`Spool` does no locking. The delivery loop runs every call on one
dedicated worker thread, and one process owns a spool directory at a time.
"""

from __future__ import annotations

import bisect
import builtins
import contextlib
import dataclasses
import errno
import json
import logging
import mmap
import os
import re
import struct
import sys
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from routewatch.results.probe_result import COLUMNS, ProbeResult

__all__ = ["Spool", "SpoolFull", "SpoolPosition", "decode_result", "encode_result", "is_disk_full"]

log = logging.getLogger(__name__)

# Payloads are ASCII-only JSON (see encode_result), so these two bytes never
# occur inside one: a reader that lands on them is at a record boundary.
MAGIC = b"\xa7\x5e"
_HEADER = struct.Struct("<2sII")  # magic, payload length, crc32(payload)
HEADER_BYTES = _HEADER.size

SEGMENT_SUFFIX = ".spool"
_SEGMENT_NAME = re.compile(r"^(\d+)\.spool$")
# A fully confirmed current segment at least this big is rotated away on
# confirm; smaller ones stay, so that a trickle of results does not create and
# delete a file per batch.
KEEP_CONFIRMED_BYTES = 64 * 1024
# errno values of a write that failed for want of space: the disk or the
# user's quota is full, or RLIMIT_FSIZE caps the file.
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# After crossing the warning level, warn again at each further 5% of max_bytes.
WARN_STEP_FRACTION = 0.05
_ALL = sys.maxsize  # a record limit meaning "the whole segment"

_ENCODER = json.JSONEncoder(separators=(",", ":"))
# raw_decode skips json.loads' type checks and whitespace handling: about a
# tenth faster on replay, and our payloads have no surrounding whitespace.
_raw_decode = json.JSONDecoder().raw_decode
_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(ProbeResult) if f.default is not dataclasses.MISSING
}
_unknown_fields_reported: set[str] = set()  # process-wide, so each is reported once


@dataclass(frozen=True, order=True)
class SpoolPosition:
    """A point in the spool: just after a record (or 0, a segment's start)."""

    segment: int  # segment number, as in the file name
    offset: int  # byte offset in that segment


class SpoolFull(Exception):
    """Appending would take the spool past ``max_bytes``; nothing was written."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the file system (or a quota or file size limit) has no room."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS


def encode_result(result: ProbeResult) -> bytes:
    """The payload for ``result``: compact JSON keyed by field name.

    Keys make old spools readable after fields are added (see
    :func:`decode_result`). ``ensure_ascii`` keeps the payload free of the
    magic bytes and copes with lone surrogates a router might stream.
    """
    row = {name: getattr(result, name) for name in COLUMNS}
    row["id"] = str(result.id)
    row["started_at"] = result.started_at.isoformat()
    return _ENCODER.encode(row).encode("ascii")


def decode_result(payload: bytes) -> ProbeResult:
    """The result encoded in ``payload``; raises ValueError if it is not one.

    Missing fields take the dataclass default; unknown fields (from a newer
    routewatch) are ignored, with one warning per field name per process.
    """
    text = payload.decode("utf-8")
    row, end = _raw_decode(text)
    if end != len(text):
        raise ValueError("payload has data after the JSON value")
    if not isinstance(row, dict):
        # ValueError, not TypeError: callers catch one error for any bad payload.
        raise ValueError(f"payload is a JSON {type(row).__name__}, not an object")
    if tuple(row) != COLUMNS:  # the fast path is a payload written by this version
        row = _conform(row)
    try:
        row["id"] = uuid.UUID(row["id"])
        row["started_at"] = datetime.fromisoformat(row["started_at"])
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"bad id or started_at: {exc}") from None
    # Positional in COLUMNS order: about twice as fast as keywords.
    return ProbeResult(*row.values())


def _conform(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with exactly COLUMNS as keys, in order."""
    for name in row.keys() - set(COLUMNS) - _unknown_fields_reported:
        _unknown_fields_reported.add(name)
        log.warning("spool record has unknown field %r (written by a newer routewatch?); ignoring it", name)
    out = {}
    for name in COLUMNS:
        if name in row:
            out[name] = row[name]
        elif name in _DEFAULTS:
            out[name] = _DEFAULTS[name]
        else:
            raise ValueError(f"missing field {name!r}")
    return out


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True)
class _Fault:
    """Bytes a reader skipped: damage mid-segment, or a bad tail."""

    torn: bool  # an unfinished last write, as opposed to corruption
    offset: int
    skipped: int  # bytes from offset to the next intact record, or to the end
    reason: str
    resumed: int | None = None  # offset of the intact record reading resumed at; None at the tail


@dataclass
class _Scan:
    frames: list[tuple[bytes, int]]  # (payload, offset just after the record)
    end: int  # offset after the last good record (or the start)
    complete: bool  # nothing more to read in this segment
    fault: _Fault | None  # a bad tail: nothing intact follows it
    skips: list[_Fault] = dataclasses.field(default_factory=list)  # damage read past


def _read_segment(path: Path, start: int, stop: int | None, limit: int) -> _Scan:
    """Up to ``limit`` records of the segment at ``path`` from ``start`` to ``stop``.

    ``stop`` None means the file's size. A missing file reads as empty.
    """
    frames: list[tuple[bytes, int]] = []
    skips: list[_Fault] = []
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            stop = size if stop is None else min(stop, size)
            if stop <= start:
                return _Scan(frames, start, True, None)
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                off = start
                while True:
                    # The happy path is inlined: this loop runs once per record on replay.
                    while off + HEADER_BYTES <= stop:
                        if len(frames) >= limit:
                            return _Scan(frames, off, False, None, skips)
                        magic, length, crc = _HEADER.unpack_from(mm, off)
                        end = off + HEADER_BYTES + length
                        if magic != MAGIC or end > stop:
                            break
                        payload = mm[off + HEADER_BYTES : end]
                        if zlib.crc32(payload) != crc:
                            break
                        frames.append((payload, end))
                        off = end
                    if off == stop:
                        return _Scan(frames, off, True, None, skips)
                    resume = _resync(mm, off, stop)
                    if resume is None:
                        return _Scan(frames, off, True, _diagnose(mm, off, stop), skips)
                    skips.append(_Fault(False, off, resume - off, _what_is_wrong(mm, off, stop), resume))
                    off = resume
    except FileNotFoundError:
        return _Scan(frames, start, True, None)


def _resync(mm: mmap.mmap, off: int, stop: int) -> int | None:
    """The offset of the first intact record after the bad one at ``off``, if any.

    Payloads are ASCII, so MAGIC occurs only at record starts or inside a
    damaged header's length and CRC bytes; a candidate counts only when its
    length stays inside the segment and its CRC verifies.
    """
    candidate = off + 1
    while True:
        candidate = mm.find(MAGIC, candidate, stop)
        if candidate < 0 or candidate + HEADER_BYTES > stop:
            return None
        _, length, crc = _HEADER.unpack_from(mm, candidate)
        end = candidate + HEADER_BYTES + length
        # length 0 has CRC 0: eight zero bytes after a stray MAGIC would pass.
        if length > 0 and end <= stop and zlib.crc32(mm[candidate + HEADER_BYTES : end]) == crc:
            return candidate
        candidate += 1


_HEADER_CUT = "record header cut short"
_BAD_MAGIC = "bad magic"
_TOO_LONG = "length past the end of the segment"
_BAD_CRC = "CRC mismatch"


def _what_is_wrong(mm: mmap.mmap, off: int, stop: int) -> str:
    """Why the record at ``off`` does not read back whole."""
    if stop - off < HEADER_BYTES:
        return _HEADER_CUT
    magic, length, _ = _HEADER.unpack_from(mm, off)
    if magic != MAGIC:
        return _BAD_MAGIC
    if off + HEADER_BYTES + length > stop:
        return _TOO_LONG
    return _BAD_CRC


def _diagnose(mm: mmap.mmap, off: int, stop: int) -> _Fault:
    """The bad tail from ``off``: no intact record follows it in the segment."""
    left = stop - off
    reason = _what_is_wrong(mm, off, stop)
    if reason == _BAD_MAGIC:
        # Power loss can leave a file extended with pages never written:
        # zeros to the end are an unfinished write, not damage.
        if not mm[off:stop].strip(b"\0"):
            return _Fault(True, off, left, "zero-filled tail")
        return _Fault(False, off, left, reason)
    if reason == _BAD_CRC:
        _, length, _ = _HEADER.unpack_from(mm, off)
        return _Fault(off + HEADER_BYTES + length == stop, off, left, reason)
    # A header or payload cut short by the end of the file: an unfinished write.
    return _Fault(True, off, left, "payload cut short" if reason == _TOO_LONG else reason)


class Spool:
    """A directory of append-only segment files holding probe results.

    Not thread-safe, by design: the caller runs every method on one worker
    thread, which also keeps appends in submission order.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 8 * 1024 * 1024,
        max_bytes: int = 1024**3,
        warn_fraction: float = 0.8,
        keep_confirmed_bytes: int = KEEP_CONFIRMED_BYTES,
    ) -> None:
        """Open (or create, mode 0700) the spool in ``directory``.

        :param segment_bytes: a segment is rotated before it would grow past
            this many bytes; one append larger than it gets a segment alone.
        :param max_bytes: appends that would take the spool past this many
            bytes on disk raise :class:`SpoolFull`.
        :param warn_fraction: fraction of ``max_bytes`` at which to warn.
        :param keep_confirmed_bytes: :meth:`confirm` rotates away the segment
            being appended to once all of it is confirmed and it holds at
            least this many bytes (0: always).
        """
        if segment_bytes <= 0 or max_bytes <= 0 or not 0 < warn_fraction <= 1 or keep_confirmed_bytes < 0:
            raise ValueError(
                "segment_bytes and max_bytes must be > 0, warn_fraction in (0, 1], keep_confirmed_bytes >= 0"
            )
        self._dir = Path(directory)
        self._segment_bytes = segment_bytes
        self._keep_confirmed = keep_confirmed_bytes
        self._max_bytes = max_bytes
        self._warn_fraction = warn_fraction
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._sizes: dict[int, int] = {}  # segment number -> bytes on disk
        for entry in os.scandir(self._dir):
            match = _SEGMENT_NAME.match(entry.name)
            if match and entry.is_file():
                self._sizes[int(match.group(1))] = entry.stat().st_size
        self._sizes = dict(sorted(self._sizes.items()))
        self._reported: set[tuple[int, int]] = set()  # faults already logged
        self.skipped_bytes = 0  # bytes of torn or corrupt records skipped so far
        # Damaged stretches read past (each usually one record) plus intact
        # records that are not results; torn tails are not counted.
        self.corrupt_records = 0
        self._warned_step: int | None = None
        self._fd = -1
        self._current = 0
        self._offset = 0  # end of the last whole record in the current segment
        self._dir_dirty = False
        self._rotate_first = False
        if self._sizes:
            self._recover(next(reversed(self._sizes)))
        else:
            # The current segment exists even when empty so that numbering
            # never restarts: the delivery loop keeps positions across restarts.
            self._create(1)
            self.sync()
        self._check_level()

    @property
    def directory(self) -> Path:
        """The spool directory."""
        return self._dir

    @property
    def bytes(self) -> int:
        """Bytes the spool holds on disk."""
        return sum(self._sizes.values())

    @property
    def head(self) -> SpoolPosition:
        """Where the next append goes: the current segment and its end."""
        return SpoolPosition(self._current, self._offset)

    def append(self, results: Sequence[ProbeResult], *, sync: bool = True) -> SpoolPosition:
        """Journal ``results`` in one write; return the position after the last.

        Once this returns the records survive a crash of this process; with
        ``sync`` they are also fsynced and survive power loss.
        Raises :class:`SpoolFull` (writing nothing) past ``max_bytes``.
        """
        if self._fd < 0:
            raise ValueError("spool is closed")
        if not results:
            return SpoolPosition(self._current, self._offset)
        data = b"".join([_frame(encode_result(r)) for r in results])
        used = self.bytes
        if used + len(data) > self._max_bytes:
            raise SpoolFull(
                f"spool {self._dir} holds {used} bytes; {len(data)} more would pass its limit of {self._max_bytes}"
            )
        if self._rotate_first or (self._offset > 0 and self._offset + len(data) > self._segment_bytes):
            self._rotate()
        self._write(data)
        self._offset += len(data)
        self._sizes[self._current] = self._offset
        if sync:
            self.sync()
        self._check_level()
        return SpoolPosition(self._current, self._offset)

    def sync(self) -> None:
        """fsync the current segment, and the directory if a segment was created."""
        if self._fd >= 0:
            os.fsync(self._fd)
        if self._dir_dirty:
            _fsync_dir(self._dir)
            self._dir_dirty = False

    def read(self, after: SpoolPosition | None, max_records: int) -> tuple[list[ProbeResult], SpoolPosition | None]:
        """Up to ``max_records`` results strictly after ``after``, in append order.

        ``after`` None reads from the oldest segment on disk. Returns the
        results and the position after the last record read (``after`` when
        there is none). The position also moves past records that are intact
        but cannot be decoded, so they are skipped once rather than forever.
        """
        results: list[ProbeResult] = []
        pos = after
        for segment in self._segments_from(after):
            start = after.offset if after is not None and segment == after.segment else 0
            while len(results) < max_records:
                scan = self._scan(segment, start, max_records - len(results))
                for payload, end in scan.frames:
                    try:
                        results.append(decode_result(payload))
                    except Exception as exc:  # noqa: BLE001 - any record that is not a result is skipped, not fatal
                        self._report_undecodable(segment, end - len(payload) - HEADER_BYTES, len(payload), exc)
                if scan.frames:
                    pos = SpoolPosition(segment, scan.end)
                if scan.complete:
                    break
                start = scan.end
            if len(results) >= max_records:
                break
        return results, pos

    def pending_records(self, after: SpoolPosition | None) -> int:
        """How many records follow ``after`` (reads them; for status, not hot paths)."""
        count = 0
        for segment in self._segments_from(after):
            start = after.offset if after is not None and segment == after.segment else 0
            count += len(self._scan(segment, start, _ALL).frames)
        return count

    def confirm(self, upto: SpoolPosition) -> int:
        """Everything up to ``upto`` is stored: delete whole segments before it.

        A segment goes when it lies wholly before ``upto.segment``, or when
        ``upto`` is at its very end. The segment being appended to is first
        rotated (appends continue in a new, empty one) when ``upto`` covers
        all of it and it holds at least ``keep_confirmed_bytes``. Positions
        stay comparable: a new segment's number is always higher.
        Returns the bytes freed.
        """
        if upto.segment == self._current and upto.offset >= self._offset >= max(1, self._keep_confirmed):
            self._rotate_confirmed()
        freed = 0
        for segment, size in list(self._sizes.items()):
            if segment > upto.segment or (segment == upto.segment and upto.offset < size):
                break
            if segment == self._current:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(segment))
            del self._sizes[segment]
            freed += size
        self._check_level()
        return freed

    def end(self) -> SpoolPosition | None:
        """The position after the last record on disk; None when the spool is empty."""
        for segment in reversed(self._sizes):
            if self._sizes[segment] > 0:
                return SpoolPosition(segment, self._sizes[segment])
        return None

    def close(self) -> None:
        """fsync and close; the spool cannot be appended to afterwards."""
        if self._fd >= 0:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------

    def _path(self, segment: int) -> Path:
        return self._dir / f"{segment:08d}{SEGMENT_SUFFIX}"

    def _segments_from(self, after: SpoolPosition | None) -> list[int]:
        numbers = list(self._sizes)
        return numbers if after is None else numbers[bisect.bisect_left(numbers, after.segment) :]

    def _scan(self, segment: int, start: int, limit: int) -> _Scan:
        # The current segment is read only up to the last whole record written.
        stop = self._offset if segment == self._current else None
        scan = _read_segment(self._path(segment), start, stop, limit)
        for skip in scan.skips:
            self._report(segment, skip)
        if scan.fault is not None:
            self._report(segment, scan.fault)
        return scan

    def _report(self, segment: int, fault: _Fault) -> None:
        """Log a fault once per spool, and count what it skips."""
        if (segment, fault.offset) in self._reported:
            return
        self._reported.add((segment, fault.offset))
        self.skipped_bytes += fault.skipped
        path = self._path(segment)
        if fault.torn:
            log.warning(
                "spool: torn record at the end of %s, offset %d (%s); skipping %d bytes",
                path,
                fault.offset,
                fault.reason,
                fault.skipped,
            )
            return
        self.corrupt_records += 1
        if fault.resumed is not None:
            log.warning(
                "spool: corrupt record in %s at offset %d (%s); skipping %d bytes to the next intact "
                "record at offset %d",
                path,
                fault.offset,
                fault.reason,
                fault.skipped,
                fault.resumed,
            )
        else:
            log.warning(
                "spool: corrupt record in %s at offset %d (%s); no intact record follows: skipping "
                "the remaining %d bytes of the segment",
                path,
                fault.offset,
                fault.reason,
                fault.skipped,
            )

    def _report_undecodable(self, segment: int, offset: int, length: int, exc: Exception) -> None:
        """Log once an intact record that is not a result (a bug, not a crash)."""
        if (segment, offset) in self._reported:
            return
        self._reported.add((segment, offset))
        self.skipped_bytes += HEADER_BYTES + length
        self.corrupt_records += 1
        log.warning("spool: skipping undecodable record in %s at offset %d: %s", self._path(segment), offset, exc)

    def _recover(self, last: int) -> None:
        """Continue the last segment after cutting a torn tail, or start a new one."""
        scan = self._scan(last, 0, _ALL)
        if scan.fault is not None and not scan.fault.torn:
            # Damage to the end of the file: leave it as found for inspection.
            self._create(last + 1)
            self.sync()
            return
        self._fd = os.open(self._path(last), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._current = last
        self._offset = scan.end
        if scan.fault is not None:
            os.ftruncate(self._fd, scan.end)
            os.fsync(self._fd)
            self._sizes[last] = scan.end

    def _create(self, segment: int) -> None:
        fd = os.open(self._path(segment), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._current = segment
        self._offset = 0
        self._sizes[segment] = 0
        self._dir_dirty = True
        self._rotate_first = False

    def _rotate(self) -> None:
        # The finished segment is fsynced so that after power loss only the
        # last segment can have a torn tail.
        os.fsync(self._fd)
        self._create(self._current + 1)

    def _rotate_confirmed(self) -> None:
        """Move appends to a new segment so that the confirmed one can be deleted."""
        try:
            self._create(self._current + 1)
            # The new name must be durable before the old one goes: an empty
            # directory would restart numbering below saved positions.
            self.sync()
        except OSError as exc:
            # Harmless: the segment stays until a later confirm or rotation.
            log.debug("spool: could not rotate a confirmed segment in %s: %s", self._dir, exc)

    def _write(self, data: builtins.bytes) -> None:  # `bytes` is a property here
        written = 0
        try:
            with memoryview(data) as view:
                while written < len(data):  # a short write means the disk is (nearly) full
                    written += os.write(self._fd, view[written:])
        except OSError:
            # A partial record would hide every later record in this segment
            # from readers: cut it off, or failing that, move to a new segment.
            try:
                os.ftruncate(self._fd, self._offset)
            except OSError:
                self._rotate_first = True
            raise

    def _check_level(self) -> None:
        """Warn when the spool crosses warn_fraction of max_bytes, and per 5% beyond."""
        used = self.bytes
        level = self._warn_fraction * self._max_bytes
        if used < level:
            if self._warned_step is not None:
                log.info(
                    "spool back below %.0f%% of its limit: %d of %d bytes",
                    self._warn_fraction * 100,
                    used,
                    self._max_bytes,
                )
                self._warned_step = None
            return
        step = int((used - level) // (WARN_STEP_FRACTION * self._max_bytes))
        if self._warned_step is None or step > self._warned_step:
            log.warning(
                "SPOOL %.0f%% FULL: %d of %d bytes in %s; its destination is not keeping up, "
                "and at the limit new results are refused",
                100 * used / self._max_bytes,
                used,
                self._max_bytes,
                self._dir,
            )
        self._warned_step = step  # also lowered, so that climbing again warns again


def _fsync_dir(directory: Path) -> None:
    """Make created or removed file names in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
