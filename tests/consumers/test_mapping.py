"""consumers.formats.mapping: an in-house JSON format described by field paths in the config,
with Kafka headers and key available to the paths; and the config errors of [formats]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.config import FormatsConfig, MappingConfig
from consumers.errors import ConfigError
from consumers.formats import Decoders
from consumers.formats.mapping import MappingDecoder, build_mapping_formats, compile_path
from consumers.ingest import Ingestor
from consumers.records import DecodeError, RawMessage, Request
from shadowroute.config import Config, load_config
from tests.consumers.test_litellm import SETTINGS, check_every_message_lands, dumps, json_values

TOPIC = "inhouse-llm"
CONFIG = f"""
[formats.by_topic]
"{TOPIC}" = "inhouse"
"other" = "auto"

[formats.mappings.inhouse]
request_id = "$headers.x-request-id"
ts = "event.time"
model = "llm.model"
provider = "llm.vendor"
messages = "data.messages"
response_text = "data.choices.0.text"
finish_reason = "data.choices.-1.stop"
input_tokens = "usage.in"
output_tokens = "usage.out"
cached_input_tokens = "usage.cached"
cost_usd = "billing.usd"
latency_ms = "timing.duration_s"
latency_unit = "s"
status = "result.code"
ok_values = ["200", "OK"]
error = "result.error"
params = "llm.params"
tags = {{ feature = "meta.feature", tenant = "$headers.tenant", region = "attrs.cloud.region" }}
"""


def record(**changes: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "event": {"time": "2026-03-01T10:00:00Z", "kind": "llm_call"},
        "llm": {"model": "gpt-4o", "vendor": "openai", "params": {"temperature": 0.1, "max_tokens": 64,
                                                                   "user": "x", "tools": [{"x": 1}]}},
        "data": {"messages": [{"role": "user", "content": "2+2?"}],
                 "choices": [{"text": "4", "stop": "stop"}]},
        "usage": {"in": 11, "out": 1, "cached": 0},
        "billing": {"usd": 0.0000375},
        "timing": {"duration_s": 0.42},
        "result": {"code": 200, "error": None},
        "meta": {"feature": "math"},
        "attrs": {"cloud.region": "eu-west-1"},
    }
    rec.update(changes)
    return rec


HEADERS = (("x-request-id", b"req-abc-1"), ("Tenant", b"acme"), ("traceparent", b"00-ab-cd-01"))


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    p = tmp_path_factory.mktemp("mapping") / "c.toml"
    p.write_text(CONFIG)
    return load_config(p, env={})


def message(value: bytes | None, headers: tuple[tuple[str, bytes], ...] = HEADERS, offset: int = 0,
            key: bytes | None = None) -> RawMessage:
    return RawMessage(TOPIC, 0, offset, value, key=key, headers=headers, timestamp_ms=1_700_000_000_000)


def decoder(cfg: Config) -> MappingDecoder:
    return MappingDecoder("inhouse", cfg.formats.mappings["inhouse"])


def one(cfg: Config, rec: Any, msg: RawMessage | None = None) -> Request:
    out = decoder(cfg).decode(orjson.dumps(rec), msg or message(None))
    assert len(out.requests) == 1
    return out.requests[0]


def reason(cfg: Config, rec: Any, msg: RawMessage | None = None) -> str:
    with pytest.raises(DecodeError) as e:
        decoder(cfg).decode(rec if isinstance(rec, bytes) else orjson.dumps(rec), msg or message(None))
    return str(e.value)


# -- a configured mapping --------------------------------------------------------------------

def test_decodes_with_paths_and_headers(cfg: Config) -> None:
    r = one(cfg, record())
    assert r.request_id == "req-abc-1"  # from the header
    assert r.ts_ms == 1_772_359_200_000
    assert (r.format, r.provider, r.model) == ("inhouse", "openai", "gpt-4o")
    assert r.messages == [{"role": "user", "content": "2+2?"}]
    assert (r.response_text, r.finish_reason) == ("4", "stop")
    assert (r.input_tokens, r.output_tokens, r.cached_input_tokens) == (11, 1, 0)
    assert (r.cost_usd, r.cost_source) == (0.0000375, "log")
    assert r.latency_ms == pytest.approx(420.0)  # seconds in the log
    assert (r.status, r.error) == ("ok", None)
    assert r.params == {"temperature": 0.1, "max_tokens": 64, "stream": False, "tools": True,
                        "tool_definitions": [{"x": 1}]}
    # Header names match ignoring case when no exact match; a dotted key is found whole.
    assert r.tags == {"feature": "math", "tenant": "acme", "region": "eu-west-1"}
    assert r.not_replayable is None


def test_through_the_ingestor_fixed_per_topic(cfg: Config) -> None:
    ing = Ingestor(cfg)
    ms = [message(orjson.dumps(record()), offset=0),
          message(orjson.dumps(record()), headers=(("x-request-id", b"req-2"),), offset=1),
          message(orjson.dumps(record(llm={})), offset=2),
          RawMessage("other", 0, 0, orjson.dumps(record()))]  # auto: not a known format
    b = ing.process(ms)
    check_every_message_lands(ms, b)
    assert b.requests["request_id"].to_list() == ["req-abc-1", "req-2"]
    assert b.requests["format"].to_list() == ["inhouse", "inhouse"]
    assert orjson.loads(b.requests["tags"][1]) == {"feature": "math", "region": "eu-west-1"}
    reasons = {(r["topic"], r["offset"]): r["reason"] for r in b.rejected.iter_rows(named=True)}
    assert reasons.keys() == {(TOPIC, 2), ("other", 0)}
    assert reasons[(TOPIC, 2)] == "missing field llm.model (model)"
    assert reasons[("other", 0)].startswith("unrecognised log format (a JSON dict matching no "
                                            "supported format: ")
    assert "litellm, openai_batch, openai_chat" in reasons[("other", 0)]


def test_status_error_and_ok_values(cfg: Config) -> None:
    assert one(cfg, record(result={"code": "ok"})).status == "ok"  # ignoring case
    r = one(cfg, record(result={"code": 503, "error": {"type": "overloaded", "retry": True}}))
    assert r.status == "error"
    assert r.error == '{"type":"overloaded","retry":true}'
    # No status in the record: failed only if there is an error.
    assert one(cfg, record(result={})).status == "ok"
    assert one(cfg, record(result={"error": "boom"})).status == "error"


def test_missing_optional_fields_and_message_time(cfg: Config) -> None:
    rec = {"llm": {"model": "m"}}
    r = one(cfg, rec, message(None, headers=()))
    assert r.request_id == f"{TOPIC}:0:0"
    assert r.ts_ms == 1_700_000_000_000
    assert r.provider == "unknown"
    assert r.messages == [] and r.not_replayable == "no messages at data.messages"
    assert (r.input_tokens, r.cost_usd, r.cost_source, r.latency_ms) == (None, None, None, None)
    assert r.params == {"stream": False, "tools": False}


def test_prompt_and_system_as_plain_strings_and_the_key() -> None:
    m = MappingConfig(model="model", prompt="input.prompt", system="input.system",
                      request_id="$key", ts="$headers.ts", input_tokens="$headers.tokens",
                      response_text="output")
    d = MappingDecoder("flat", m)
    msg = RawMessage("t", 0, 0, None, key=b"k-9",
                     headers=(("ts", b"1764244800000"), ("tokens", b" 42 ")))
    [r] = d.decode(orjson.dumps({"model": "m", "input": {"prompt": "hi", "system": "be nice"},
                                 "output": [{"type": "text", "text": "he"}, {"text": "llo"}]}),
                   msg).requests
    assert r.messages == [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    assert (r.request_id, r.ts_ms, r.input_tokens, r.response_text) == ("k-9", 1_764_244_800_000, 42,
                                                                       "hello")
    bare = MappingDecoder("bare", MappingConfig(model="model"))
    with pytest.raises(DecodeError, match="^no request time: mapping 'bare' has no ts path and the "
                                          "message has no timestamp$"):
        bare.decode(b'{"model": "m"}', msg)
    with pytest.raises(DecodeError, match=r"^missing field \$headers.ts \(ts\) and the message has"):
        d.decode(b'{"model": "m"}', RawMessage("t", 0, 0, None))
    [r] = bare.decode(b'{"model": "m"}', message(None)).requests
    assert r.not_replayable == "mapping 'bare' has no messages or prompt path"


def test_arrays_and_ndjson_ids_stay_distinct(cfg: Config) -> None:
    d = decoder(cfg)
    out = d.decode(orjson.dumps([record(), record()]), message(None))
    assert [r.request_id for r in out.requests] == ["req-abc-1:0", "req-abc-1:1"]
    out = d.decode(orjson.dumps(record()) + b"\n" + orjson.dumps(record()), message(None, headers=()))
    assert [r.request_id for r in out.requests] == [f"{TOPIC}:0:0:0", f"{TOPIC}:0:0:1"]


def test_paths() -> None:
    obj = {"a": {"b": [10, {"c": "x"}], "d.e": {"f": 1}, "d": {"g": 2}}, "n": None}
    msg = RawMessage("t", 0, 0, None, key=b"key", headers=(("H", b"v"), ("h", b"w")))

    def get(path: str) -> Any:
        return compile_path(path).get(obj, msg)

    assert get("a.b.0") == 10
    assert get("a.b.-1.c") == "x"
    assert get("a.d.e.f") == 1  # the key "d.e"
    assert get("a.d.g") == 2
    assert get("a.b.2") is None and get("a.b.x") is None and get("a.b.0.z") is None
    assert get("n") is None and get("nope.deeper") is None
    assert get("$headers.h") == "w" and get("$headers.H") == "v" and get("$headers.missing") is None
    assert get("$key") == "key"
    for bad, why in [("", "must be a field path"), ("a..b", "has an empty step"),
                     (".a", "has an empty step"), ("$headers.", "names no header"),
                     ("$header.x", "must be \"$headers.<name>\" or \"$key\"")]:
        with pytest.raises(ValueError) as e:
            compile_path(bad)
        assert why in str(e.value)


@pytest.mark.parametrize(("rec", "headers", "expected"), [
    (record(llm={"model": 7}), HEADERS, "field llm.model (model) must be a non-empty string, got int 7"),
    (record(llm={"model": ""}), HEADERS, "field llm.model (model) must be a non-empty string, got str ''"),
    (record(), (("x-request-id", b"\xffx"),), "header 'x-request-id' is not valid UTF-8 (byte 0)"),
    (record(usage={"in": -1}), HEADERS, "field usage.in (input_tokens) is not a plausible token count: -1"),
    (record(usage={"in": 1.5}), HEADERS, "field usage.in (input_tokens) is not a plausible token count: 1.5"),
    (record(usage={"in": 10**12}), HEADERS, "field usage.in (input_tokens) is not a plausible token "
                                            "count: 1000000000000"),
    (record(usage={"in": "many"}), HEADERS, "field usage.in (input_tokens) must be a token count, "
                                            "got str 'many'"),
    (record(usage={"in": True}), HEADERS, "field usage.in (input_tokens) must be a token count, "
                                          "got bool True"),
    (record(billing={"usd": -0.5}), HEADERS, "field billing.usd (cost_usd) must be a finite number "
                                             "between 0 and 1e+12, got -0.5"),
    (record(billing={"usd": "NaN"}), HEADERS, "field billing.usd (cost_usd) must be a finite number "
                                              "between 0 and 1e+12, got nan"),
    (record(timing={"duration_s": [1]}), HEADERS, "field timing.duration_s (latency_ms) must be a "
                                                  "number, got a list"),
    (record(event={"time": "soon"}), HEADERS, "field event.time (ts) is not an ISO-8601 time: 'soon'"),
    (record(event={"time": -1}), HEADERS, "field event.time (ts) is not a valid time: -1"),
    (record(data={"messages": "hi"}), HEADERS, "field messages must be a non-empty list (at data.messages)"),
    (record(data={"messages": [{"role": "user", "content": 5}]}), HEADERS,
     "messages[0].content must be a string or a list of parts (at data.messages)"),
    (record(data={"messages": [{"role": "u"}], "choices": [{"text": 5}]}), HEADERS,
     "field data.choices.0.text (response_text) must be a string or a list of text parts, got int 5"),
    (record(llm={"model": "m", "vendor": ["x"]}), HEADERS, "field llm.vendor (provider) must be a "
                                                           "string, got a list"),
    (record(llm={"model": "m", "params": "hot"}), HEADERS, "field llm.params (params) must be an "
                                                           "object, got str 'hot'"),
    (record(meta={"feature": {"a": 1}}), HEADERS, "field meta.feature (tag feature) must be a string, "
                                                  "number or boolean, got an object"),
    (record(result={"code": [200]}), HEADERS, "field result.code (status) must be a string, number or "
                                              "boolean, got a list"),
    ([1, 2], HEADERS, "element 0: a record of format 'inhouse' must be a JSON object, got int"),
    ("text", HEADERS, "a record of format 'inhouse' must be a JSON object, got str"),
])
def test_reasons(cfg: Config, rec: Any, headers: tuple[tuple[str, bytes], ...], expected: str) -> None:
    assert reason(cfg, rec, message(None, headers=headers)) == expected


def test_reasons_for_broken_bytes(cfg: Config) -> None:
    # orjson reads 1024 levels of nesting but writes 254: say which field, not crash when storing.
    deep = b"[" * 300 + b"]" * 300
    assert reason(cfg, b'{"llm": {"model": "m"}, "result": {"code": 500, "error": ' + deep + b"}}") == (
        "field result.error (error) cannot be stored as JSON: Recursion limit reached")
    assert reason(cfg, b'{"llm": {"model": "m"}, "data": {"messages": ' + deep + b"}}") == (
        "field messages cannot be stored as JSON: Recursion limit reached (at data.messages)")
    assert reason(cfg, b'{"llm": {"model": "\xff"}}') == "invalid UTF-8 at byte 19"
    assert reason(cfg, b'{"llm": ').startswith("invalid JSON: ")
    assert reason(cfg, b"[]") == "empty JSON array: no records"
    assert reason(cfg, b'{"a": NaN}').startswith("invalid JSON: ")


# -- config ----------------------------------------------------------------------------------

def test_config_builds_the_formats(cfg: Config) -> None:
    assert cfg.formats.by_topic == {TOPIC: "inhouse", "other": "auto"}
    m = cfg.formats.mappings["inhouse"]
    assert m.ok_values == ("200", "OK") and m.latency_unit == "s"
    assert dict(m.tags) == {"feature": "meta.feature", "tenant": "$headers.tenant",
                            "region": "attrs.cloud.region"}
    assert set(build_mapping_formats(cfg.formats)) == {"inhouse"}
    assert Decoders(cfg.formats.by_topic, extra=build_mapping_formats(cfg.formats))
    assert Config().formats == FormatsConfig()


def config_error(tmp_path: Path, toml: str, env: dict[str, str] | None = None) -> str:
    p = tmp_path / "bad.toml"
    p.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_config(p, env=env or {})
    return str(e.value)


@pytest.mark.parametrize(("toml", "expected"), [
    ('[formats.by_topic]\n"my-topic" = "x"\n',
     "formats.by_topic.my-topic: unknown format 'x'; known: auto, litellm, openai_batch, openai_chat"),
    ('[formats.by_topic]\n"t" = "inhouse2"\n[formats.mappings.inhouse]\nmodel = "m"\n',
     "formats.by_topic.t: unknown format 'inhouse2'; known: auto, inhouse, litellm, openai_batch, "
     "openai_chat"),
    ("[formats.mappings.inhouse]\nrequest_id = \"id\"\n", "formats.mappings.inhouse.model: is required"),
    ('[formats.mappings.inhouse]\nmodel = ""\n',
     'formats.mappings.inhouse.model: must be a field path, e.g. "llm.model"'),
    ('[formats.mappings.inhouse]\nmodel = "a..b"\n',
     "formats.mappings.inhouse.model: 'a..b' has an empty step (two dots, or a dot at an end)"),
    ('[formats.mappings.inhouse]\nmodel = "m"\nrequest_id = "$headers."\n',
     "formats.mappings.inhouse.request_id: '$headers.' names no header, e.g. \"$headers.x-request-id\""),
    ('[formats.mappings.inhouse]\nmodel = "m"\ntags = { feature = "$env.X" }\n',
     "formats.mappings.inhouse.tags.feature: '$env.X': a path starting with $ must be "
     "\"$headers.<name>\" or \"$key\""),
    ('[formats.mappings.inhouse]\nmodel = "m"\nmessages = "a"\nprompt = "b"\n',
     "formats.mappings.inhouse.prompt: set either messages or prompt, not both"),
    ('[formats.mappings.inhouse]\nmodel = "m"\nmessages = "a"\nsystem = "b"\n',
     "formats.mappings.inhouse.system: goes with prompt (a plain-string prompt); with messages the "
     "system prompt is one of the messages"),
    ('[formats.mappings.inhouse]\nmodel = "m"\nlatency_unit = "min"\n',
     "formats.mappings.inhouse.latency_unit: must be 'ms' or 's', got 'min'"),
    ('[formats.mappings.inhouse]\nmodel = "m"\nstatus = "s"\nok_values = []\n',
     "formats.mappings.inhouse.ok_values: must list at least one value when status is set"),
    ('[formats.mappings.litellm]\nmodel = "m"\n',
     "formats.mappings.litellm: name 'litellm' is taken by a built-in format"),
    ('[formats.mappings.inhouse]\nmodle = "m"\n',
     "formats.mappings.inhouse.modle: unknown key (did you mean 'model'?)"),
    ('[formats]\nby_topic = "litellm"\n', "formats.by_topic: must be a table, got str 'litellm'"),
])
def test_config_errors(tmp_path: Path, toml: str, expected: str) -> None:
    got = config_error(tmp_path, toml)
    # Other engineers may register more built-in formats (otlp_json, otlp_proto): compare the rest.
    if "; known: " in expected:
        head, known = expected.split("; known: ")
        got_head, got_known = got.split("; known: ")
        assert got_head == head
        assert set(known.split(", ")) <= set(got_known.split(", "))
    else:
        assert got == expected


def test_by_topic_from_the_environment(tmp_path: Path) -> None:
    cfg = load_config(None, env={"SHADOWROUTE_FORMATS__BY_TOPIC__LOGS": "litellm"})
    assert cfg.formats.by_topic == {"logs": "litellm"}
    assert "unknown format 'nope'" in config_error(
        tmp_path, "", env={"SHADOWROUTE_FORMATS__BY_TOPIC__LOGS": "nope"})


# -- properties ------------------------------------------------------------------------------

PATHS = ["llm", "llm.model", "data", "data.messages", "data.choices", "usage", "usage.in",
         "billing.usd", "timing", "result.code", "event.time", "meta.feature", "llm.params"]


def set_path(rec: dict[str, Any], path: str, value: Any) -> None:
    *head, last = path.split(".")
    node = rec
    for k in head:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[last] = value


@st.composite
def inhouse_records(draw: st.DrawFn) -> bytes:
    rec = record()
    for _ in range(draw(st.integers(0, 3))):
        set_path(rec, draw(st.sampled_from(PATHS)), draw(json_values))
    raw = dumps(rec)
    shape = draw(st.sampled_from(["one", "array", "ndjson", "cut"]))
    if shape == "array":
        return b"[" + raw + b"," + raw + b"]"
    if shape == "ndjson":
        return raw + b"\n" + raw
    if shape == "cut":
        return raw[: draw(st.integers(0, len(raw)))]
    return raw


headers_st = st.lists(st.tuples(st.sampled_from(["x-request-id", "X-Request-Id", "tenant", "other"]),
                                st.binary(max_size=12)), max_size=4).map(tuple)


@SETTINGS
@given(st.lists(st.tuples(inhouse_records() | st.binary(max_size=100), headers_st), min_size=1,
                max_size=8))
def test_every_message_lands_exactly_once(cfg: Config, items: list[tuple[bytes, Any]]) -> None:
    ms = [message(v, headers=h, offset=i) for i, (v, h) in enumerate(items)]
    b = Ingestor(cfg).process(ms)  # must not raise
    check_every_message_lands(ms, b)
