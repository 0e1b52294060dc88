"""`shadowroute report`: one self-contained HTML file people look at (no network at view time).

Plots are plotly figures with plotly.js embedded once in the file; tables are plain HTML. What
it shows, each from the named query in sql/queries.sql:

- cost vs quality per router and cheap model (`report_curves`): quality against savings on the
  threshold grid with the 95% quality band, `all_cheap` and `oracle`, the calibrated points
  saved beside the DuckDB file, and the quality bar;
- per segment (`report_segments`): traffic, savings and quality with bounds if everything in
  the segment went to the cheap model; segments whose upper bound is below the bar in red,
  whose interval contains it in amber;
- over time (`report_daily`): frontier spend of every request per day and the estimated
  savings and quality of all_cheap;
- 100% of the traffic (`report_traffic`, `report_cost_concentration`): requests, cost, tokens
  and latency by model and tag, and the share of requests that makes 80% of the cost;
- what is not covered (`report_ineligible`): ineligible requests by reason.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

import sql
from analytics.calibrate import calibration_file

QueryFn = Callable[[str, dict[str, Any]], tuple[list[str], list[tuple[Any, ...]]]]

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
tr.bad{background:#f8d0d0}tr.unsure{background:#fbecc5}.note{color:#666;font-size:.9em}
"""


def _rows(query: QueryFn, name: str) -> list[dict[str, Any]]:
    cols, rows = query(sql.query(name), {})
    return [dict(zip(cols, r, strict=True)) for r in rows]


def _fmt(v: Any, kind: str = "") -> str:
    if v is None:
        return "–"
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if kind == "usd":
        return f"${v:,.4f}"
    if isinstance(v, float):
        return f"{v:,.4g}"
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()[:10]
    return html.escape(str(v))


def _table(rows: Sequence[dict[str, Any]], cols: Sequence[tuple[str, str, str]],
           row_class: Callable[[dict[str, Any]], str] = lambda r: "") -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in cols)
    body = "".join(
        f'<tr class="{row_class(r)}">' + "".join(f"<td>{_fmt(r.get(k), kind)}</td>"
                                                for k, _, kind in cols) + "</tr>"
        for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>" if rows else '<p class="note">No data.</p>'


def _curve_figures(curves: list[dict[str, Any]], calibrated: dict[str, Any],
                   min_quality: float) -> list[go.Figure]:
    figs = []
    for model in sorted({r["model"] for r in curves}):
        rows = [r for r in curves if r["model"] == model]
        fig = go.Figure()
        for router in sorted({r["router"] for r in rows} - {"all_cheap", "oracle"}):
            pts = sorted((r for r in rows if r["router"] == router and r["quality"] is not None),
                         key=lambda r: r["threshold"])
            x = [r["savings"] for r in pts]
            band_x = x + x[::-1]
            band_y = [r["quality_upper"] for r in pts] + [r["quality_lower"] for r in pts][::-1]
            fig.add_trace(go.Scatter(x=band_x, y=band_y, fill="toself", opacity=0.2,
                                     line={"width": 0}, hoverinfo="skip", showlegend=False,
                                     name=f"{router} 95%"))
            fig.add_trace(go.Scatter(
                x=x, y=[r["quality"] for r in pts], mode="lines+markers", name=router,
                text=[f"threshold {r['threshold']:.2f}" for r in pts]))
        for ref, symbol in (("all_cheap", "square"), ("oracle", "star")):
            for r in (r for r in rows if r["router"] == ref and r["quality"] is not None):
                fig.add_trace(go.Scatter(
                    x=[r["savings"]], y=[r["quality"]], mode="markers", name=ref,
                    marker={"symbol": symbol, "size": 12},
                    error_y={"type": "data", "symmetric": False,
                             "array": [r["quality_upper"] - r["quality"]],
                             "arrayminus": [r["quality"] - r["quality_lower"]]}))
        for name, c in calibrated.items():
            if c.get("model") != model or not c.get("calibration"):
                continue
            fig.add_trace(go.Scatter(
                x=[c["calibration"]["savings"]], y=[c["calibration"]["quality"]],
                mode="markers", marker={"symbol": "diamond", "size": 14},
                name=f"calibrated {name} ({c['router']} @ {c['threshold']})"))
        # Random routing between all cheap and all frontier: the straight line between them.
        cheap = next((r for r in rows if r["router"] == "all_cheap"), None)
        if cheap and cheap["quality"] is not None:
            fig.add_trace(go.Scatter(x=[0, cheap["savings"]], y=[1, cheap["quality"]],
                                     mode="lines", line={"dash": "dot"}, name="random"))
        fig.add_hline(y=min_quality, line_dash="dash", annotation_text=f"bar {min_quality}")
        fig.update_layout(title=f"Cost vs quality: cheap model {model}",
                          xaxis_title="savings (share of frontier cost)",
                          yaxis_title="quality relative to the frontier", height=480)
        figs.append(fig)
    return figs


def _frontier_figure(points: list[dict[str, Any]], min_quality: float) -> go.Figure:
    """Every policy's point (routers on each cheap model, cascades, each setting of the
    multi-tier policies) and the line through the efficient ones."""
    fig = go.Figure()
    for kind, symbol in (("router", "circle"), ("cascade", "triangle-up"),
                         ("single_model", "square"), ("multi_tier", "diamond"),
                         ("reference", "star")):
        pts = [p for p in points if p["kind"] == kind and p["quality"] is not None]
        if pts:
            fig.add_trace(go.Scatter(
                x=[p["savings"] for p in pts], y=[p["quality"] for p in pts], mode="markers",
                name=kind, marker={"symbol": symbol, "size": 8, "opacity": 0.6},
                text=[f"{p['policy']} {p['model']} {p['label'] or ''}" for p in pts]))
    best = sorted((p for p in points if p["on_frontier"]), key=lambda p: p["savings"])
    fig.add_trace(go.Scatter(x=[p["savings"] for p in best], y=[p["quality"] for p in best],
                             mode="lines", name="frontier",
                             text=[f"{p['policy']} {p['model']} {p['label'] or ''}"
                                   for p in best]))
    fig.add_hline(y=min_quality, line_dash="dash", annotation_text=f"bar {min_quality}")
    fig.update_layout(title="Cost vs quality across every policy, multi-tier included",
                      xaxis_title="savings (share of frontier cost)",
                      yaxis_title="quality relative to the frontier", height=480)
    return fig


def build(query: QueryFn, db: Path | None = None, *, min_quality: float = 0.95,
          title: str = "shadowroute report") -> str:
    """The report as one HTML document."""
    curves = _rows(query, "report_curves")
    frontier = _rows(query, "report_frontier")
    segments = _rows(query, "report_segments")
    daily = _rows(query, "report_daily")
    traffic = _rows(query, "report_traffic")
    conc = _rows(query, "report_cost_concentration")
    inel = _rows(query, "report_ineligible")
    calibrated: dict[str, Any] = {}
    if db is not None and calibration_file(db).exists():
        calibrated = json.loads(calibration_file(db).read_text())

    figs = _curve_figures(curves, calibrated, min_quality)
    if frontier:
        figs.append(_frontier_figure(frontier, min_quality))
    daily_fig = traffic_fig = None
    if daily:
        daily_fig = go.Figure()
        for model in sorted({r["model"] for r in daily}):
            rs = [r for r in daily if r["model"] == model]
            daily_fig.add_trace(go.Scatter(x=[r["day"] for r in rs],
                                           y=[r["savings_all_cheap"] for r in rs],
                                           mode="lines+markers", name=f"savings, all on {model}"))
            daily_fig.add_trace(go.Scatter(x=[r["day"] for r in rs],
                                           y=[r["quality_all_cheap"] for r in rs],
                                           mode="lines+markers", name=f"quality, all on {model}"))
        daily_fig.add_trace(go.Bar(x=[r["day"] for r in daily],
                                   y=[r["frontier_usd"] for r in daily],
                                   name="frontier spend (USD)", yaxis="y2", opacity=0.3))
        daily_fig.update_layout(title="Over time", height=420,
                                yaxis={"title": "share", "range": [0, 1.05]},
                                yaxis2={"title": "USD", "overlaying": "y", "side": "right"})
    if traffic:
        traffic_fig = go.Figure(go.Bar(x=[f"{r['model']} | {r['segment']}" for r in traffic],
                                       y=[r["cost_usd"] for r in traffic], name="cost"))
        traffic_fig.update_layout(title="Frontier cost by model and tag (100% of requests)",
                                  height=400, yaxis_title="USD")
    rendered = 0

    def plot(fig: go.Figure | None, empty: str) -> str:
        # plotly.js goes into the file once, with the first plot.
        nonlocal rendered
        if fig is None:
            return f'<p class="note">{empty}</p>'
        rendered += 1
        return pio.to_html(fig, include_plotlyjs=(rendered == 1), full_html=False,
                           div_id=f"plot-{rendered}", config={"displaylogo": False})

    def seg_class(r: dict[str, Any]) -> str:
        if r["quality_upper"] is not None and r["quality_upper"] < min_quality:
            return "bad"
        if r["quality_lower"] is not None and r["quality_lower"] < min_quality:
            return "unsure"
        return ""

    curve_plots = [plot(f, "") for f in figs] or ['<p class="note">No scored samples.</p>']
    c = conc[0] if conc else {}
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f'<p class="note">Generated {now}. Quality is relative to the frontier answer (1 = as '
        f"good); bands and bounds are 95% intervals; the bar is {min_quality}.</p>",
        "<h2>Cost vs quality</h2>", *curve_plots,
        "<h2>Per segment (everything in it on the cheap model)</h2>",
        _table(segments, [("segment", "segment", ""), ("model", "cheap model", ""),
                          ("requests", "requests", ""), ("samples", "samples", ""),
                          ("savings", "savings", "pct"), ("quality", "quality", "pct"),
                          ("quality_lower", "95% lower", "pct"),
                          ("quality_upper", "95% upper", "pct"),
                          ("projected_usd_saved", "USD saved", "usd")], seg_class),
        '<p class="note">Red: shown below the bar; amber: not shown above it yet.</p>',
        "<h2>Over time</h2>", plot(daily_fig, "No request times."),
        "<h2>Traffic (100% of requests)</h2>",
        f"<p>{_fmt(c.get('requests'))} requests, {_fmt(c.get('cost_usd'), 'usd')} frontier "
        f"cost; {_fmt(c.get('share_of_requests_for_80pct'), 'pct')} of the requests (the most "
        "expensive) make 80% of the cost.</p>",
        plot(traffic_fig, ""),
        _table(traffic, [("model", "model", ""), ("segment", "tag", ""),
                         ("requests", "requests", ""), ("cost_usd", "cost", "usd"),
                         ("input_tokens", "input tokens", ""),
                         ("output_tokens", "output tokens", ""),
                         ("latency_p50_ms", "latency p50 ms", ""),
                         ("latency_p95_ms", "latency p95 ms", ""),
                         ("eligible", "eligible", ""), ("sampled", "sampled", "")]),
        "<h2>Not covered</h2>",
        _table(inel, [("reason", "ineligible because", ""), ("requests", "requests", ""),
                      ("cost_usd", "cost", "usd")]),
        "</body></html>",
    ]
    return "\n".join(parts)
