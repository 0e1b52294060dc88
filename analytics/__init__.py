"""Out: the DuckDB store, the savings estimates (SQL views in sql/) and the rollout gate."""

from analytics.gate import EXIT_CODES, GateRequest, evaluate
from analytics.store import Store
from analytics.store_process import StoreProcess

__all__ = ["EXIT_CODES", "GateRequest", "Store", "StoreProcess", "evaluate"]
