"""`shadowroute replay FILE…`: the service's pipeline over a finite file source, with progress."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from consumers.file_source import FileSource
from shadowroute.config import Config
from shadowroute.errors import StoreError


def run_replay(cfg: Config, make_source: Callable[[Callable[[], dict[tuple[str, int], int]]],
                                                   FileSource],
               console: Console | None = None) -> dict[str, Any]:
    from shadowroute.service import run_loop

    console = console or Console(stderr=True)
    return run_loop(_replay(cfg, make_source, console))


async def _replay(cfg: Config, make_source: Any, console: Console) -> dict[str, Any]:
    from shadowroute.service import Service

    svc = Service(cfg, source=None, source_factory=make_source)
    source: FileSource = svc.source  # type: ignore[assignment]
    task = asyncio.create_task(svc.run(install_signals=True, until_drained=True))
    columns = (TextColumn("{task.description:<24}"), BarColumn(),
               TextColumn("{task.completed:,.0f}"), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        read = progress.add_task("records read", total=None, info="")
        shadow = progress.add_task("shadow samples scored", total=None, info="")
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            try:
                c = await svc.store.counts() if not task.done() else None
            except StoreError:  # the service is closing its store: it is ending
                c = None
            progress.update(read, completed=source.read,
                            info=f"{source.resumed:,} already stored" if source.resumed else "")
            if c:
                progress.update(shadow, total=max(c["samples"], 1),
                                completed=c["done"] + c["skipped"],
                                info=f"{c['pending']} pending, spend ${c['shadow_spend_usd']:.4f}")
    await task
    summary = {"read": source.read, "already_stored": source.resumed, "db": cfg.storage.db_path}
    console.print(f"replayed {source.read:,} records ({source.resumed:,} already stored) into "
                  f"{cfg.storage.db_path}")
    return summary
