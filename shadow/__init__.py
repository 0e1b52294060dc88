"""Replay: routers score each sampled request, cheap models answer it in shadow, scorers compare
the answers with the frontier answer."""

from shadow.client import CallResult, ModelClient
from shadow.routers import ROUTER_KINDS, RouteInput, Router, build_routers
from shadow.runner import SampleResult, ShadowRunner
from shadow.scorers import SCORERS, Scorer

__all__ = ["ROUTER_KINDS", "SCORERS", "CallResult", "ModelClient", "RouteInput", "Router",
           "SampleResult", "Scorer", "ShadowRunner", "build_routers"]
