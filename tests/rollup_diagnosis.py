"""Where stored probes and the hourly rollup disagree: for a test whose published counts fall short.

The rollup counts a probe flagged ``prober_overloaded`` (the prober's event
loop lagged; a loaded test machine makes some) in ``overloaded``, not in
``attempts``, and the API leaves it out of ``samples.attempted``
(``samples.excluded_prober_overloaded``): stored rows are compared with both.
"""

from __future__ import annotations

from hostile.harness import fetch_rows


def rollup_diagnosis(dsn: str) -> str:
    """Where stored probes and the hourly rollup disagree, and the ingest log: to find a lost count."""
    raw = fetch_rows(
        dsn,
        "SELECT date_trunc('hour', started_at) AS bucket, model, region, count(*) AS n,"
        " count(*) FILTER (WHERE prober_overloaded) AS overloaded"
        " FROM probe_results GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    rolled = {
        (r["bucket"], r["model"], r["region"]): r["n"]
        for r in fetch_rows(
            dsn,
            "SELECT bucket, model, region, sum(attempts + overloaded) AS n FROM probe_hist_hourly GROUP BY 1, 2, 3",
        )
    }
    differ = [
        (r["bucket"].isoformat(), r["model"], r["region"], r["n"], rolled.get((r["bucket"], r["model"], r["region"])))
        for r in raw
        if rolled.get((r["bucket"], r["model"], r["region"])) != r["n"]
    ]
    overloaded = sum(r["overloaded"] for r in raw)
    log = fetch_rows(dsn, "SELECT id, rows, hist_done, xid::text AS xid, stored_at FROM probe_ingest_log ORDER BY id")
    # The rows of the cells that differ, with the transaction that wrote each: is one outside every logged batch?
    cells = [
        fetch_rows(
            dsn,
            "SELECT xmin::text AS xmin, started_at FROM probe_results"
            " WHERE date_trunc('hour', started_at) = $1::text::timestamptz AND model = $2 AND region = $3"
            " ORDER BY started_at",
            bucket,
            model,
            region,
        )
        for bucket, model, region, _, _ in differ
    ]
    return (
        f"\nstored probes flagged prober_overloaded (not in samples.attempted): {overloaded}"
        f"\nraw vs rollup (bucket, model, region, raw, rolled attempts + overloaded): {differ}"
        f"\nrows there: {cells}\ningest log: {log}"
    )
