"""shadowroute report: one self-contained HTML file, opened in headless Chromium (Debian's
`chromium`): no console errors, every plot rendered, and a screenshot kept as an artefact
(test-artifacts/report.png)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from analytics.calibrate import save
from analytics.report import build
from analytics.store import Store
from tests.analytics.test_gate import MODEL, ROUTER, S, fill, perfect

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]
DATA = {
    "gpt-4o|chat": (4_000, perfect(300) + [S(0.0, 0.8)] * 30),
    "gpt-4o|code": (2_000, perfect(200, 0.3) + [S(1.0, 0.7)] * 50),
    "gpt-4o|legal": (500, [S(1.0, 0.9)] * 60 + [S(0.0, 0.9)] * 40),
}


def chromium() -> str:
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is needed: apt-get install -y chromium (.ci/run does)"
    return exe


def run_chromium(tmp: Path, page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                           "--virtual-time-budget=10000", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line and re.search(r"Uncaught|Error", line)]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "report.duckdb"
    store = Store(path)
    fill(store, DATA, noise=False)
    con = store.con
    # 100% of the traffic: costs, tokens, latency and times over three days, and some requests
    # the estimate cannot cover.
    con.execute("UPDATE requests SET cost_usd = 0.002 + (hash(request_id) % 1000) / 50000.0, "
                "input_tokens = 500, output_tokens = 200, latency_ms = 800 + hash(request_id) % 900, "
                "model = 'gpt-4o', ts = TIMESTAMP '2026-01-01' + to_hours((hash(request_id) % 72)::BIGINT)")
    con.execute("INSERT INTO requests (request_id, stratum, model, eligible, ineligible_reason, "
                "cost_usd) SELECT 'inel-' || i, 'gpt-4o|chat', 'gpt-4o', false, "
                "CASE WHEN i % 3 = 0 THEN 'tools offered' ELSE 'no answer text' END, 0.01 "
                "FROM range(90) t(i)")
    store.close()
    save(path, "rules95", {"router": ROUTER, "model": MODEL, "threshold": 0.5, "target": 0.95,
                           "calibration": {"savings": 0.6, "quality": 0.99}})
    return path


def test_the_report_has_every_section(db: Path) -> None:
    store = Store(db, read_only=True)
    try:
        page = build(store.query_table, db, min_quality=0.95)
    finally:
        store.close()
    # Self-contained: plotly.js inline once, no script or stylesheet from elsewhere (the bundle
    # names a CDN only for geographic maps, which the report has none of).
    assert page.count("<script>/**\n* plotly.js v") == 1
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=", page)
    for section in ("Cost vs quality", "Per segment", "Over time", "Traffic (100% of requests)",
                    "Not covered"):
        assert section in page
    # The legal segment is shown below the bar; the calibrated point and references drawn.
    assert re.search(r'<tr class="bad"><td>legal</td>', page)
    assert "calibrated rules95" in page and '"name":"oracle"' in page
    assert "tools offered" in page and "no answer text" in page
    assert re.search(r"[0-9.]+% of the requests \(the most expensive\) make 80% of the cost", page)


def test_the_report_renders_in_chromium(db: Path, tmp_path: Path) -> None:
    from tests.support.process import cli

    out = tmp_path / "report.html"
    r = cli("report", "--db", str(db), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}")
    dom = run_chromium(tmp_path, out, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_errors(dom.stderr) == []
    # Every plot div got plotly's SVG: three curves' worth of traces is one figure per cheap
    # model, plus over time and traffic.
    divs = re.findall(r'<div id="(plot-\d+)"[^>]*class="[^"]*plotly-graph-div[^"]*js-plotly-plot',
                      dom.stdout)
    assert sorted(divs) == ["plot-1", "plot-2", "plot-3"], divs
    assert dom.stdout.count('class="main-svg"') >= 3 * 2
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    r = run_chromium(tmp_path, out, f"--screenshot={shot}", "--window-size=1280,2600",
                     "--hide-scrollbars")
    assert r.returncode == 0 and shot.stat().st_size > 50_000, r.stderr[-2000:]


def test_a_broken_page_is_caught(tmp_path: Path) -> None:
    # The check above can fail: a script error shows up in Chromium's console log.
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    r = run_chromium(tmp_path, page, "--dump-dom")
    assert any("undefinedFunction" in line for line in console_errors(r.stderr)), r.stderr[-2000:]
