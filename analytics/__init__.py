"""Out: the DuckDB store, the savings estimates (SQL views in sql/), their intervals, RouteLLM's
router metrics, calibrated thresholds and the rollout gate. (`analytics.report`, which imports
plotly, is imported by the command that writes a report.)"""

from analytics.calibrate import calibrate
from analytics.curves import RouterSamples, router_metrics
from analytics.gate import EXIT_CODES, GateRequest, evaluate
from analytics.intervals import StratifiedSample, analytic, bootstrap, point
from analytics.store import Store
from analytics.store_process import StoreProcess

__all__ = ["EXIT_CODES", "GateRequest", "RouterSamples", "Store", "StoreProcess",
           "StratifiedSample", "analytic", "bootstrap", "calibrate", "evaluate", "point",
           "router_metrics"]
