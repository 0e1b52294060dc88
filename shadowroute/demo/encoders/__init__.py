"""Generated calls (`shadowroute.demo.calls.Call`) as records of each supported log format."""

from __future__ import annotations

from collections.abc import Callable

from shadowroute.demo.calls import Call
from shadowroute.demo.encoders.litellm import encode_litellm
from shadowroute.demo.encoders.openai_chat import encode_openai_chat
from shadowroute.demo.encoders.otlp import encode_otlp_json, encode_otlp_proto

# Format name (as `formats.by_topic` names it) -> encoder of one call (failed or not).
ENCODERS: dict[str, Callable[[Call, bool], bytes]] = {
    "openai_chat": encode_openai_chat,
    "litellm": encode_litellm,
    "otlp_json": encode_otlp_json,
    "otlp_proto": encode_otlp_proto,
}
