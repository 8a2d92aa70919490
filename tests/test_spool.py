"""The spool against real files: round trips, rotation, confirmation, damage, SIGKILL."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import uuid
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from factories import probe_result

from routewatch.delivery.spool import (
    HEADER_BYTES,
    MAGIC,
    Spool,
    SpoolFull,
    SpoolPosition,
    _frame,
    decode_result,
    encode_result,
)
from routewatch.results.probe_result import COLUMNS, ProbeResult

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def make_result(i: int, **changes: Any) -> ProbeResult:
    """Result number ``i``; its id encodes ``i`` so order is easy to check."""
    fields: dict[str, Any] = {
        "id": uuid.UUID(int=i),
        "started_at": T0 + timedelta(seconds=i),
        "region": "eu-west",
        "router": "openrouter",
        "model": "openai/gpt-4o-mini",
        "http_status": 200,
        "ttft_ms": 350.25 + i,
        "output_tokens": 64,
        "chunks": 60,
    }
    return probe_result(**(fields | changes))


def numbers(results: list[ProbeResult]) -> list[int]:
    return [r.id.int for r in results]


def read_all(spool: Spool, after: SpoolPosition | None = None, batch: int = 7) -> list[ProbeResult]:
    """Everything after ``after``, read in small batches as the writer does."""
    out: list[ProbeResult] = []
    while True:
        got, after = spool.read(after, batch)
        if not got:
            return out
        out += got


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool"))


def spool_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.endswith("spool") and r.levelno == logging.WARNING]


# -- encoding ------------------------------------------------------------------


@pytest.mark.unit
def test_every_field_type_round_trips(tmp_path: Path) -> None:
    full = make_result(
        1,
        started_at=datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
        ok=False,
        error_class="http_5xx",
        error_detail='upstream said «nein» 🙅 \u2028 "quoted" \\ \n',
        model_served="modèle-ü",
        provider="Ωmega",
        request_id="gen-\ud800",  # a lone surrogate, as a broken stream might hand over
        connect_ms=0.1 + 0.2,  # not exactly representable: must come back bit-identical
        ttft_ms=1e-9,
        e2e_ms=1.5e300,
        output_tps=float("inf"),
        input_tokens=0,
        output_tokens=2**40,
        tokens_estimated=True,
        retry_after_s=None,
        prober_overloaded=True,
        dialect="litellm",
        attempts=3,
        fallbacks=1,
        router_request_id="8911edb3-074c-4a37-8de4-42f043d434e7",
        reported_cost_usd=4.4e-06,
    )
    sparse = make_result(2, http_status=None, ttft_ms=None, output_tokens=None, chunks=0)
    for r in (full, sparse):
        assert decode_result(encode_result(r)) == r
    with Spool(tmp_path) as spool:
        spool.append([full, sparse])
        back = read_all(spool)
    assert back == [full, sparse]
    assert back[0].started_at.utcoffset() == timedelta(hours=2)
    assert isinstance(back[0].id, uuid.UUID)


@pytest.mark.unit
def test_payload_is_json_keyed_by_field_name() -> None:
    raw = json.loads(encode_result(make_result(3)))
    assert list(raw) == list(COLUMNS)
    assert raw["id"] == str(uuid.UUID(int=3))
    assert raw["started_at"] == "2025-03-01T12:00:03+00:00"


@pytest.mark.unit
def test_old_and_new_payloads_decode(caplog: pytest.LogCaptureFixture) -> None:
    raw = json.loads(encode_result(make_result(4)))
    del raw["prober_overloaded"], raw["loop_lag_ms"]  # written before these fields existed
    raw["from_the_future"] = 1  # written by a newer version
    raw = {"zz_first": True, **raw}
    payload = json.dumps(raw).encode()
    with caplog.at_level(logging.WARNING):
        assert decode_result(payload) == make_result(4)
        assert decode_result(payload) == make_result(4)
    unknown = [m for m in spool_warnings(caplog) if "unknown field" in m]
    assert len(unknown) == 2  # one per field name, not one per record
    assert any("from_the_future" in m for m in unknown)


@pytest.mark.unit
def test_a_spool_written_before_router_dialects_still_replays(tmp_path: Path) -> None:
    # Records spooled by a prober that predates the dialect fields: same frames, fewer keys.
    new_fields = ("dialect", "attempts", "fallbacks", "router_request_id", "reported_cost_usd")
    with Spool(tmp_path) as spool:
        spool.append([make_result(5), make_result(6)])
    segment = segment_files(tmp_path)[0]
    data = segment.read_bytes()
    for i in (5, 6):
        payload = encode_result(make_result(i))
        raw = json.loads(payload)
        for name in new_fields:
            del raw[name]
        old = json.dumps(raw, separators=(",", ":")).encode()
        old_frame = _frame(old)
        data = data.replace(_frame(payload), old_frame)
        assert old_frame in data
    segment.write_bytes(data)
    with Spool(tmp_path) as spool:
        back = read_all(spool)
    assert back == [make_result(5), make_result(6)]
    assert all(r.attempts is None and r.dialect is None and r.reported_cost_usd is None for r in back)


@pytest.mark.unit
@pytest.mark.parametrize("payload", [b"", b"[1]", b"{}", b'{"id": 5}', b"nope", b"{} {}", b"\xff"])
def test_bad_payloads_raise_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode_result(payload)


# -- appending and reading -----------------------------------------------------


@pytest.mark.unit
def test_empty_or_missing_directory_is_an_empty_spool(tmp_path: Path) -> None:
    directory = tmp_path / "not" / "yet"
    with Spool(directory) as spool:
        assert spool.read(None, 10) == ([], None)
        assert spool.end() is None
        assert spool.pending_records(None) == 0
        assert spool.bytes == 0
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@pytest.mark.unit
def test_order_across_segment_rotation(tmp_path: Path) -> None:
    record = len(encode_result(make_result(0))) + HEADER_BYTES
    with Spool(tmp_path, segment_bytes=10 * record) as spool:
        positions = [spool.append([make_result(i)], sync=False) for i in range(25)]
        positions.append(spool.append([make_result(i) for i in range(25, 40)], sync=False))  # a segment alone
        positions.append(spool.append([make_result(i) for i in range(40, 45)], sync=False))
        assert positions == sorted(positions)
        assert numbers(read_all(spool)) == list(range(45))
        assert spool.pending_records(None) == 45
        assert spool.pending_records(positions[9]) == 35
        assert spool.end() == positions[-1]
    files = segment_files(tmp_path)
    assert [f.name for f in files] == [f"{n:08d}.spool" for n in range(1, 6)]
    # No record spans segments: every file holds whole records, and only
    # the one written by a single oversized append is bigger than a segment.
    sizes = [f.stat().st_size for f in files]
    assert all(size % record == 0 for size in sizes)
    assert sizes == [10 * record, 10 * record, 5 * record, 15 * record, 5 * record]


@pytest.mark.unit
def test_read_position_semantics(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        p1 = spool.append([make_result(1), make_result(2)])
        p2 = spool.append([make_result(3)])
        got, pos = spool.read(None, 2)
        assert numbers(got) == [1, 2] and pos == p1
        got, pos = spool.read(p1, 100)
        assert numbers(got) == [3] and pos == p2
        assert spool.read(p2, 100) == ([], p2)  # nothing new: `after` comes back
        assert spool.read(None, 0) == ([], None)


@pytest.mark.unit
def test_read_while_appending(tmp_path: Path) -> None:
    seen: list[int] = []
    pos = None
    with Spool(tmp_path, segment_bytes=4096) as spool:
        for i in range(300):
            spool.append([make_result(i)], sync=False)
            if i % 7 == 0:
                got, pos = spool.read(pos, 5)
                seen += numbers(got)
        seen += numbers(read_all(spool, pos))
    assert seen == list(range(300))


# -- confirming ----------------------------------------------------------------


@pytest.mark.unit
def test_confirm_deletes_only_whole_segments_before_the_position(tmp_path: Path) -> None:
    record = len(encode_result(make_result(0))) + HEADER_BYTES
    with Spool(tmp_path, segment_bytes=4 * record) as spool:
        positions = [spool.append([make_result(i)], sync=False) for i in range(14)]  # segments 1-4
        assert [p.segment for p in positions] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 2
        before = spool.bytes

        # Inside segment 2: only segment 1 is wholly stored.
        assert spool.confirm(positions[5]) == 4 * record
        assert spool.bytes == before - 4 * record
        assert [f.name for f in segment_files(tmp_path)] == ["00000002.spool", "00000003.spool", "00000004.spool"]
        assert numbers(read_all(spool, positions[5])) == list(range(6, 14))

        # At the very end of segment 3 (not the current one): it goes too.
        assert spool.confirm(positions[11]) == 8 * record
        assert [f.name for f in segment_files(tmp_path)] == ["00000004.spool"]
        assert numbers(read_all(spool)) == [12, 13]  # None now starts at the oldest left

        # The segment being appended to stays, even when all of it is stored.
        assert spool.confirm(positions[13]) == 0
        assert spool.confirm(positions[13]) == 0
        assert spool.bytes == 2 * record
        assert numbers(read_all(spool, positions[13])) == []


@pytest.mark.unit
def test_confirming_everything_empties_the_spool_on_disk(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:  # the default 8 MiB segments
        last = None
        for i in range(0, 2000, 10):
            last = spool.append([make_result(k) for k in range(i, i + 10)], sync=False)
        assert last is not None and last.segment == 1
        held = spool.bytes
        assert held > 512 * 1024
        assert spool.confirm(last) == held
        assert spool.bytes == 0
        assert sum(f.stat().st_size for f in segment_files(tmp_path)) == 0
        assert [f.name for f in segment_files(tmp_path)] == ["00000002.spool"]  # appends go on here
        assert read_all(spool, last) == []
        after = spool.append([make_result(2000)])
        assert after > last  # positions keep their order across the rotation
        assert numbers(read_all(spool, last)) == [2000]
    with Spool(tmp_path) as spool:  # and after a restart
        assert numbers(read_all(spool, last)) == [2000]
        assert spool.append([make_result(2001)]) > after


@pytest.mark.unit
def test_confirm_keeps_a_small_current_segment(tmp_path: Path) -> None:
    record = len(encode_result(make_result(0))) + HEADER_BYTES
    with Spool(tmp_path) as spool:
        last = spool.append([make_result(i) for i in range(3)])
        assert spool.confirm(last) == 0  # below keep_confirmed_bytes: no file churn per batch
        assert spool.bytes == 3 * record
    with Spool(tmp_path, keep_confirmed_bytes=0) as spool:
        assert spool.confirm(last) == 3 * record
        assert spool.bytes == 0
        assert spool.confirm(spool.head) == 0  # an empty segment is not rotated again
        assert [f.name for f in segment_files(tmp_path)] == ["00000002.spool"]


@pytest.mark.unit
def test_confirm_behind_the_end_rotates_nothing(tmp_path: Path) -> None:
    with Spool(tmp_path, keep_confirmed_bytes=0) as spool:
        first = spool.append([make_result(0)])
        spool.append([make_result(1)])
        assert spool.confirm(first) == 0
        assert numbers(read_all(spool, first)) == [1]
        assert [f.name for f in segment_files(tmp_path)] == ["00000001.spool"]


@pytest.mark.unit
def test_reopening_continues_segment_numbering(tmp_path: Path) -> None:
    record = len(encode_result(make_result(0))) + HEADER_BYTES
    with Spool(tmp_path, segment_bytes=2 * record) as spool:
        for i in range(5):
            last = spool.append([make_result(i)])
        assert last.segment == 3
    with Spool(tmp_path, segment_bytes=2 * record) as spool:
        assert spool.end() == last
        # The last segment has room for one more, then a new number follows.
        assert spool.append([make_result(5)]) == SpoolPosition(3, 2 * record)
        assert spool.append([make_result(6)]) == SpoolPosition(4, record)
        spool.confirm(SpoolPosition(4, record))
    # Everything confirmed: the current segment remains, so numbering (and
    # positions the writer saved) stay valid after another restart.
    assert [f.name for f in segment_files(tmp_path)] == ["00000004.spool"]
    with Spool(tmp_path, segment_bytes=2 * record) as spool:
        pos = spool.append([make_result(7)])
        assert pos.segment >= 4
        assert numbers(read_all(spool, SpoolPosition(4, record))) == [7]


# -- limits --------------------------------------------------------------------


@pytest.mark.unit
def test_spool_full_writes_nothing(tmp_path: Path) -> None:
    record = len(encode_result(make_result(0))) + HEADER_BYTES
    with Spool(tmp_path, segment_bytes=3 * record, max_bytes=5 * record) as spool:
        for i in range(5):
            spool.append([make_result(i)])
        sizes = [f.stat().st_size for f in segment_files(tmp_path)]
        with pytest.raises(SpoolFull, match=rf"holds {5 * record} bytes.*limit of {5 * record}"):
            spool.append([make_result(5)])
        with pytest.raises(SpoolFull):
            spool.append([make_result(5), make_result(6)])
        assert [f.stat().st_size for f in segment_files(tmp_path)] == sizes
        assert spool.bytes == 5 * record
        assert numbers(read_all(spool)) == list(range(5))
        # Confirming frees room again.
        spool.confirm(SpoolPosition(1, 3 * record))
        spool.append([make_result(5)])
        assert numbers(read_all(spool)) == [3, 4, 5]


@pytest.mark.unit
def test_warns_at_80_percent_then_every_5_percent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    record = len(encode_result(make_result(0))) + HEADER_BYTES
    caplog.set_level(logging.INFO, logger="routewatch.delivery.spool")
    with Spool(tmp_path, segment_bytes=20 * record, max_bytes=40 * record) as spool:  # 5% = 2 records
        for i in range(31):
            spool.append([make_result(i)], sync=False)
        assert spool_warnings(caplog) == []
        spool.append([make_result(31)], sync=False)  # 32 of 40 = 80%
        assert len(spool_warnings(caplog)) == 1
        assert "80% FULL" in spool_warnings(caplog)[0]
        spool.append([make_result(32)], sync=False)  # 82.5%: same step, quiet
        assert len(spool_warnings(caplog)) == 1
        spool.append([make_result(33)], sync=False)  # 85%
        assert len(spool_warnings(caplog)) == 2
        spool.confirm(SpoolPosition(1, 20 * record))  # 14 of 40 left
        infos = [r for r in caplog.records if r.levelno == logging.INFO]
        assert len(infos) == 1 and "back below 80%" in infos[0].getMessage()
        for i in range(34, 52):
            spool.append([make_result(i)], sync=False)  # 32 of 40 again
        assert len(spool_warnings(caplog)) == 3


# -- damage --------------------------------------------------------------------


def _spool_with(tmp_path: Path, count: int, **kwargs: Any) -> tuple[list[SpoolPosition], int]:
    """A closed spool of ``count`` results; their positions and the size of one record."""
    with Spool(tmp_path, **kwargs) as spool:
        positions = [spool.append([make_result(i)]) for i in range(count)]
    return positions, positions[0].offset


def _cut_header(path: Path, record: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - record + 5)


def _cut_payload(path: Path, record: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 10)


def _bad_crc_at_end(path: Path, record: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(-3, os.SEEK_END)
        fh.write(b"X")


def _zeros_at_end(path: Path, record: int) -> None:
    with open(path, "ab") as fh:
        fh.write(b"\0" * 4096)


@pytest.mark.unit
@pytest.mark.parametrize("damage", [_cut_header, _cut_payload, _bad_crc_at_end, _zeros_at_end])
def test_torn_tail_is_skipped_and_truncated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[Path, int], None]
) -> None:
    _, record = _spool_with(tmp_path, 5)
    path = segment_files(tmp_path)[-1]
    damage(path, record)
    good = 5 * record if damage is _zeros_at_end else 4 * record
    with caplog.at_level(logging.WARNING), Spool(tmp_path) as spool:
        warnings = spool_warnings(caplog)
        assert len(warnings) == 1
        assert "torn record" in warnings[0] and str(path) in warnings[0] and f"offset {good}" in warnings[0]
        assert path.stat().st_size == good  # truncated on open
        assert numbers(read_all(spool)) == list(range(good // record))
        pos = spool.append([make_result(99)])
        assert pos == SpoolPosition(1, good + record)
        assert numbers(read_all(spool))[-1] == 99
    with caplog.at_level(logging.WARNING), Spool(tmp_path) as spool:
        assert len(spool_warnings(caplog)) == 1  # clean now: no new warning
        assert numbers(read_all(spool))[-1] == 99


@pytest.mark.unit
def test_corruption_mid_segment_loses_only_the_damaged_record(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    record = len(encode_result(make_result(0))) + HEADER_BYTES
    _spool_with(tmp_path, 10, segment_bytes=4 * record)  # 4 + 4 + 2
    first = segment_files(tmp_path)[0]
    with open(first, "r+b") as fh:
        fh.seek(record + HEADER_BYTES + 20)  # inside the second record's payload
        fh.write(b"#")
    with caplog.at_level(logging.WARNING), Spool(tmp_path, segment_bytes=4 * record) as spool:
        assert numbers(read_all(spool)) == [0, *range(2, 10)]
        warnings = spool_warnings(caplog)
        assert len(warnings) == 1
        assert "corrupt record" in warnings[0] and str(first) in warnings[0] and f"offset {record}" in warnings[0]
        assert f"next intact record at offset {2 * record}" in warnings[0]
        assert spool.skipped_bytes == record
        assert spool.corrupt_records == 1
        assert numbers(read_all(spool)) == [0, *range(2, 10)]
        assert len(spool_warnings(caplog)) == 1  # reported once per spool
        assert spool.corrupt_records == 1
        assert spool.pending_records(None) == 9
    assert first.stat().st_size == 4 * record  # not rewritten


@pytest.mark.unit
def test_corruption_in_last_segment_resyncs_and_appends_continue(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, record = _spool_with(tmp_path, 3)
    path = segment_files(tmp_path)[0]
    with open(path, "r+b") as fh:
        fh.seek(record)
        fh.write(b"\x00\x01")  # bad magic, with a good record after it
    with caplog.at_level(logging.WARNING), Spool(tmp_path) as spool:
        assert "corrupt record" in spool_warnings(caplog)[0]
        assert path.stat().st_size == 3 * record  # not cut: an intact record follows the damage
        assert spool.append([make_result(7)]) == SpoolPosition(1, 4 * record)
        assert numbers(read_all(spool)) == [0, 2, 7]


@pytest.mark.unit
def test_corrupt_tail_of_last_segment_starts_a_new_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, record = _spool_with(tmp_path, 3)
    path = segment_files(tmp_path)[0]
    with open(path, "r+b") as fh:
        fh.seek(2 * record)
        fh.write(b"\x00\x01")  # bad magic on the last record: damage, but not a torn write
    with caplog.at_level(logging.WARNING), Spool(tmp_path) as spool:
        assert "no intact record follows" in spool_warnings(caplog)[0]
        assert path.stat().st_size == 3 * record  # left as found
        assert spool.append([make_result(7)]) == SpoolPosition(2, record)
        assert numbers(read_all(spool)) == [0, 1, 7]
        assert spool.corrupt_records == 1


def _flip(path: Path, offset: int, xor: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ xor]))


def _damaged(positions: list[SpoolPosition], offset: int) -> int:
    """The number of the record whose bytes include ``offset``."""
    starts = [0] + [p.offset for p in positions[:-1]]
    return max(i for i, start in enumerate(starts) if start <= offset)


@pytest.mark.unit
def test_one_flipped_byte_loses_exactly_the_record_it_hits(tmp_path: Path) -> None:
    count = 5000
    original = tmp_path / "original"
    with Spool(original) as spool:
        # Several appends per write, as the writer does under load.
        positions = [
            p for i in range(0, count, 5) for p in _append_each(spool, [make_result(k) for k in range(i, i + 5)])
        ]
    size = positions[-1].offset
    assert len(segment_files(original)) == 1 and size > 1024 * 1024
    rng = random.Random(20250301)
    starts = [0] + [p.offset for p in positions[:-1]]
    middle = starts[count // 2]
    # Every byte of one record mid-segment (magic, length, CRC, payload), then random places.
    offsets = list(range(middle, middle + HEADER_BYTES + 8)) + [rng.randrange(size) for _ in range(24)]
    for n, offset in enumerate(offsets):
        copy = tmp_path / f"copy{n}"
        copy.mkdir()
        data = (original / "00000001.spool").read_bytes()
        (copy / "00000001.spool").write_bytes(data)
        _flip(copy / "00000001.spool", offset, rng.randrange(1, 256))
        with Spool(copy) as spool:
            got = numbers(read_all(spool, batch=500))
            lost = _damaged(positions, offset)
            assert got == [i for i in range(count) if i != lost], f"flip at {offset} (record {lost})"
            # The last record has nothing after it: its damage reads as a torn tail.
            assert spool.corrupt_records == (lost != count - 1), offset


def _append_each(spool: Spool, results: list[ProbeResult]) -> list[SpoolPosition]:
    """Append ``results`` in one write; the position after each of them."""
    end = spool.append(results, sync=False)
    sizes = [len(encode_result(r)) + HEADER_BYTES for r in results]
    after, out = end.offset - sum(sizes), []
    for size in sizes:
        after += size
        out.append(SpoolPosition(end.segment, after))
    return out


@pytest.mark.unit
@pytest.mark.parametrize("new_length", [0, 1, 100, 2**20, 2**32 - 1], ids=lambda n: f"length={n}")
def test_a_damaged_length_field_loses_one_record(tmp_path: Path, new_length: int) -> None:
    positions, record = _spool_with(tmp_path, 200)
    path = segment_files(tmp_path)[0]
    with open(path, "r+b") as fh:
        fh.seek(positions[99].offset + len(MAGIC))  # record 100's length field
        fh.write(new_length.to_bytes(4, "little"))
    with Spool(tmp_path) as spool:
        assert numbers(read_all(spool)) == [i for i in range(200) if i != 100]
        assert spool.corrupt_records == 1
        assert spool.skipped_bytes == record
        assert spool.pending_records(None) == 199
        assert spool.append([make_result(200)]).offset == 201 * record  # appends continue in place


@pytest.mark.unit
def test_undecodable_record_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    positions, _ = _spool_with(tmp_path, 3)
    path = segment_files(tmp_path)[0]
    # Valid framing around a payload that is not a result.
    payload = b'{"id": "not-a-uuid"}'
    with open(path, "ab") as fh:
        fh.write(MAGIC + len(payload).to_bytes(4, "little") + zlib.crc32(payload).to_bytes(4, "little") + payload)
    with caplog.at_level(logging.WARNING), Spool(tmp_path) as spool:
        spool.append([make_result(3)])
        assert numbers(read_all(spool)) == [0, 1, 2, 3]
        assert "undecodable record" in spool_warnings(caplog)[0]
        got, pos = spool.read(positions[-1], 1)  # reads past the bad one
        assert numbers(got) == [3] and pos == spool.end()


# -- crash ---------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys, uuid
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from factories import probe_result
    from routewatch.delivery.spool import Spool

    spool = Spool(Path(sys.argv[1]), segment_bytes=256 * 1024)
    i = 0
    while True:
        batch = [probe_result(id=uuid.UUID(int=i + k), error_detail="y" * ((i + k) % 500)) for k in range(1 + i % 4)]
        spool.append(batch, sync=False)
        i += len(batch)
        print(i, flush=True)
    """
)


@pytest.mark.system
def test_sigkill_mid_append_loses_nothing_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path), str(Path(__file__).parent)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    reported = 0
    try:
        for line in child.stdout:
            reported = int(line)
            if reported >= 20_000:
                break
        child.send_signal(signal.SIGKILL)
        for line in child.stdout:  # counts printed before the kill landed
            if line.endswith("\n"):
                reported = int(line)
    finally:
        child.kill()  # a no-op unless the test failed early
        child.stdout.close()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert reported >= 20_000
    with caplog.at_level(logging.WARNING), Spool(tmp_path) as spool:
        got = numbers(read_all(spool, batch=5000))
    assert len(got) >= reported
    assert got == list(range(len(got)))  # in order, no gaps
    assert all("torn record" in m for m in spool_warnings(caplog))
