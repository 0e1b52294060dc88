"""The lake: each instance's tables as Parquet in one shared directory, and their union read back
with the same views and macros as one DuckDB file.

Several instances in one consumer group each keep their own DuckDB file. Each exports its
tables under `<lake>/instance=<id>/`: `requests/day=YYYY-MM-DD/*.parquet` by the day of
production time (`day=unknown` without one), every other table one `<table>.parquet`. An export
replaces that instance's previous one whole (written beside it, then renamed into place), so a
reader sees one complete export per instance.

`merge` reads every instance's export into a fresh DuckDB file with the service's schema; the
same record stored by two instances (a partition that moved while its last batch was in
flight) is kept once, by the tables' keys (`request_id`, `sample_id`, (sample, model), ...; a
completed sample before a pending copy of it); the samples are numbered afresh (`sample_key`
is per file). Every view and macro then reads the union: `shadowroute sql|gate|report --lake`.

Parquet is written and read with pyarrow, not DuckDB's COPY: the service's DuckDB instance is
closed to files (`lock_down`), and an export runs in the service.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from analytics.config import INSTANCE_ID
from analytics.errors import StoreError
from analytics.store import Store

# What the estimates and reports read; not the per-instance state (offsets, budget leases, OTel
# spans waiting for their content).
TABLES = ("requests", "samples", "shadow_calls", "scores", "router_scores", "router_calls",
          "router_costs", "cascade_scores", "tier_policies", "noise_floor", "judge_calls",
          "shadow_attempts", "rejected", "skipped", "offset_resets")



def instance_name(configured: str) -> str:
    """`storage.instance_id`, or the host's name made fit for a directory."""
    if configured:
        return configured
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    return host.strip(".-_")[:100] or "instance"


def check_instance(instance: str) -> None:
    if not INSTANCE_ID.fullmatch(instance):
        raise StoreError(f"instance id {instance!r}: letters, digits, '.', '_' and '-' only "
                         "(it names a directory of the lake)")


def export(store: Store, lake: Path, instance: str) -> dict[str, int]:
    """Write `store`'s tables as this instance's export; returns rows per table."""
    check_instance(instance)
    lake.mkdir(parents=True, exist_ok=True)
    final = lake / f"instance={instance}"
    staging = lake / f".staging-{instance}-{os.getpid()}"
    old = lake / f".old-{instance}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    counts: dict[str, int] = {}
    try:
        for table in TABLES:
            if table == "requests":
                data = store.fetch_arrow(
                    "SELECT *, coalesce(strftime(ts, '%Y-%m-%d'), 'unknown') AS day "
                    "FROM requests")
                ds.write_dataset(data, staging / "requests", format="parquet",
                                 partitioning=["day"], partitioning_flavor="hive",
                                 existing_data_behavior="overwrite_or_ignore")
            else:
                data = store.fetch_arrow(f"SELECT * FROM {table}")  # noqa: S608 (of TABLES)
                pq.write_table(data, staging / f"{table}.parquet")
            counts[table] = data.num_rows
        if final.exists():
            final.rename(old)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return counts


def _read(instance: Path, table: str) -> pa.Table | None:
    path = instance / table if table == "requests" else instance / f"{table}.parquet"
    if not path.exists():
        return None  # exported by a version without the table
    data = (ds.dataset(path, format="parquet", partitioning="hive").to_table()
            if path.is_dir() else pq.read_table(path))
    drop = [c for c in ("day", "sample_key") if c in data.column_names]
    return data.drop_columns(drop) if drop else data


def merge(lake: Path, db: Path) -> dict[str, int]:
    """Every instance's export of `lake` into a new DuckDB file at `db`; returns rows per table
    after removing what two instances both stored."""
    instances = sorted(p for p in lake.glob("instance=*") if p.is_dir()) if lake.is_dir() else []
    if not instances:
        raise StoreError(f"no instance exports under {lake} (instance=<id>/ directories, "
                         "written by a service with storage.lake_dir or `shadowroute "
                         "export-lake`)")
    store = Store(db)
    try:
        for table in TABLES:
            parts = [t for t in (_read(i, table) for i in instances) if t is not None]
            if not parts:
                continue
            data = pa.concat_tables(parts, promote_options="permissive")
            # A completed sample wins over a copy of it still pending elsewhere.
            order = "ORDER BY status = 'done' DESC" if table == "samples" else ""
            store.insert_arrow(table, data, order)
        store.migrate()  # numbers the other tables' rows by the new sample keys
        return {t: int(store.fetch(f"SELECT count(*) FROM {t}")[0][0])  # noqa: S608
                for t in TABLES}
    finally:
        store.close()
