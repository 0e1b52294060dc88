"""How commands read the data: the DuckDB file directly, or the running service's HTTP API.

DuckDB lets one process hold a file for writing. When the service is not running, `sql` and
`gate` open the file read-only. When it is, the file is locked; they then find the service's
address in `<db>.service.json` and ask it (`/v1/sql`, `/v1/verdict`), which answers from the
service's own connection: the data is as fresh as the last committed batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson

from analytics.gate import GateRequest, evaluate, query_params
from analytics.store import Store
from shadowroute.errors import ServiceUnreachable, StoreError, StoreLockedError
from shadowroute.service import service_file


def _service_url(db: Path) -> str:
    f = service_file(db)
    try:
        return str(orjson.loads(f.read_bytes())["url"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        raise ServiceUnreachable(
            f"{db} is locked by another process and no running service announced itself in "
            f"{f}; stop the other process or point --db at a copy") from None


def _post(url: str, path: str, **kw: Any) -> Any:
    try:
        resp = httpx.request("POST" if "json" in kw else "GET", url + path, timeout=60.0, **kw)
    except httpx.HTTPError as e:
        raise ServiceUnreachable(f"the running service at {url} did not answer: {e}") from None
    data = orjson.loads(resp.content)
    if resp.status_code != 200:
        raise StoreError(data.get("error", resp.text) if isinstance(data, dict) else resp.text)
    return data


def run_sql(db: Path, query: str) -> tuple[list[str], list[Any], str]:
    """(columns, rows, where the answer came from)."""
    try:
        store = Store(db, read_only=True)
    except StoreLockedError:
        url = _service_url(db)
        data = _post(url, "/v1/sql", json={"sql": query})
        return data["columns"], [tuple(r) for r in data["rows"]], f"service {url}"
    try:
        cols, rows = store.query_table(query)
        return cols, rows, f"file {db}"
    finally:
        store.close()


def verdict(db: Path, req: GateRequest) -> dict[str, Any]:
    try:
        store = Store(db, read_only=True)
    except StoreLockedError:
        url = _service_url(db)
        return _post(url, "/v1/verdict", params=query_params(req))  # type: ignore[no-any-return]
    try:
        return evaluate(store.query_table, req)
    finally:
        store.close()
