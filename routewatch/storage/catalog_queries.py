"""The model catalog (``model_catalog``): what each router's model list said, and when.

A prober records each complete read of a router's list (:func:`record_listing`);
the aggregator reads the whole catalog (:func:`read_catalog`) to mark retired
models and show the listed prices. Several processes may record the same
router: each write carries ``seen``, the time its list was read, and a row
only moves forward in that time, so the writes may land in any order:

* a model in a list read at ``seen`` has ``last_seen`` raised to ``seen``, and is
  un-retired if it was retired before ``seen`` (it came back);
* a model missing from a complete list read at ``seen`` is retired at ``seen``
  if it was last listed before then and is not retired already.

A list read earlier than a retirement, but written after it, leaves the
model retired: it was listed then and gone later, which is the truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from routewatch.storage.connection import Conn
from routewatch.storage.tables import MODEL_CATALOG


@dataclass(frozen=True, slots=True)
class CatalogRow:
    """One model as the catalog has it."""

    router: str
    model: str
    first_seen: datetime
    last_seen: datetime
    retired_at: datetime | None
    input_usd_per_mtok: float | None
    output_usd_per_mtok: float | None
    cached_input_usd_per_mtok: float | None = None


# (model, input, output and cached-input price) of one listed model, None where the list gave none.
ListedModel = tuple[str, float | None, float | None, float | None]

_UPSERT = f"""
INSERT INTO {MODEL_CATALOG} AS c
    (router, model, first_seen, last_seen, retired_at, input_usd_per_mtok, output_usd_per_mtok,
     cached_input_usd_per_mtok)
SELECT $1, m.model, $2, $2, NULL, m.input, m.output, m.cached
FROM unnest($3::text[], $4::float8[], $5::float8[], $6::float8[]) AS m(model, input, output, cached)
ON CONFLICT (router, model) DO UPDATE SET
    first_seen = least(c.first_seen, excluded.first_seen),
    last_seen = greatest(c.last_seen, excluded.last_seen),
    retired_at = CASE WHEN c.retired_at < excluded.last_seen THEN NULL ELSE c.retired_at END,
    input_usd_per_mtok = CASE WHEN excluded.last_seen >= c.last_seen
                              THEN excluded.input_usd_per_mtok ELSE c.input_usd_per_mtok END,
    output_usd_per_mtok = CASE WHEN excluded.last_seen >= c.last_seen
                               THEN excluded.output_usd_per_mtok ELSE c.output_usd_per_mtok END,
    cached_input_usd_per_mtok = CASE WHEN excluded.last_seen >= c.last_seen
                                     THEN excluded.cached_input_usd_per_mtok ELSE c.cached_input_usd_per_mtok END
"""

_RETIRE = f"""
UPDATE {MODEL_CATALOG}
SET retired_at = $2
WHERE router = $1 AND retired_at IS NULL AND last_seen < $2 AND NOT (model = ANY($3::text[]))
"""


async def record_listing(
    conn: Conn,
    router: str,
    seen: datetime,
    listed: Sequence[ListedModel],
    *,
    complete: bool,
    keep: Sequence[str] = (),
) -> int:
    """Record ``router``'s list as read at ``seen``; retire what it lacks only if ``complete``.

    ``keep``: models never retired whatever the list says (those configured by hand).
    Returns how many models this write retired.
    """
    models = [m[0] for m in listed]
    async with conn.transaction():
        await conn.execute(_UPSERT, router, seen, models, *([m[k] for m in listed] for k in (1, 2, 3)))
        if not complete:
            return 0
        status = await conn.execute(_RETIRE, router, seen, [*models, *keep])
    return int(status.split()[-1])


_COLUMNS = (
    "c.router, c.model, c.first_seen, c.last_seen, c.retired_at, "
    "c.input_usd_per_mtok, c.output_usd_per_mtok, c.cached_input_usd_per_mtok"
)


async def read_catalog(conn: Conn, keys: Sequence[tuple[str, str]] | None = None) -> list[CatalogRow]:
    """The catalog's rows of the (router, model) ``keys``, or every row; by router and model.

    The aggregator asks for the models it publishes: a router may list thousands more.
    """
    if keys is None:
        rows = await conn.fetch(f"SELECT {_COLUMNS} FROM {MODEL_CATALOG} AS c ORDER BY c.router, c.model")
    else:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM {MODEL_CATALOG} AS c "
            "JOIN unnest($1::text[], $2::text[]) AS k(router, model) USING (router, model) "
            "ORDER BY c.router, c.model",
            [router for router, _ in keys],
            [model for _, model in keys],
        )
    return [CatalogRow(*row) for row in rows]


async def listed_models(conn: Conn, router: str) -> dict[str, tuple[float, float, float | None] | None]:
    """The models of ``router`` the catalog has as listed now (not retired), by id, with their listed
    (input, output, cached input) prices; None where the list gave no input or output price."""
    rows = await conn.fetch(
        "SELECT model, input_usd_per_mtok, output_usd_per_mtok, cached_input_usd_per_mtok "
        f"FROM {MODEL_CATALOG} WHERE router = $1 AND retired_at IS NULL ORDER BY model",
        router,
    )
    return {row[0]: (row[1], row[2], row[3]) if row[1] is not None and row[2] is not None else None for row in rows}
