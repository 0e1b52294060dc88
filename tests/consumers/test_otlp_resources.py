"""OTLP/JSON resources read once per distinct text (`wire_json._RESOURCES`).

`decode_json` reads an export with each resource left as JSON text, type-checks a text the first
time it is seen and reads its tags once; `decode_json_whole` decodes everything into structs, as
every export was decoded before. For any bytes, valid or not, both must give the same requests or
the same rejection reason, whether the resource's text was seen before or not."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.formats.otlp import wire_json
from consumers.formats.otlp.wire_json import decode_json, decode_json_whole
from consumers.ingest import Ingestor
from consumers.records import Decoded, DecodeError, RawMessage
from shadowroute.config import load_config
from tests.consumers.test_otlp import (
    GOOD_JSON,
    MSG,
    SETTINGS,
    current,
    export,
    json_any,
    json_mutations,
    otlp_json,
    span,
)


def outcome(fn: Any, value: bytes) -> Decoded | str:
    try:
        return fn(value, MSG)  # type: ignore[no-any-return]
    except DecodeError as e:
        return f"rejected: {e}"


def assert_agree(value: bytes) -> Decoded | str:
    """`decode_json` gives what `decode_json_whole` gives, with the resource text unseen and
    then seen."""
    whole = outcome(decode_json_whole, value)
    wire_json._RESOURCES.clear()
    assert outcome(decode_json, value) == whole
    assert outcome(decode_json, value) == whole  # its text now known (if it checked)
    return whole


def with_resource(value: bytes, resource: Any) -> bytes:
    obj = orjson.loads(value)
    obj["resourceSpans"][0]["resource"] = resource
    return orjson.dumps(obj)


GOOD = otlp_json(export(span(current()), resource={"service.name": "checkout", "app.team": "growth",
                                                   "deployment.environment.name": "prod"}))


def test_a_good_export_reads_its_resource_tags_once_per_text() -> None:
    out = assert_agree(GOOD)
    assert isinstance(out, Decoded)
    tags = out.requests[0].tags
    assert (tags["service"], tags["team"], tags["environment"]) == ("checkout", "growth", "prod")
    resource = orjson.dumps(orjson.loads(GOOD)["resourceSpans"][0]["resource"])
    assert wire_json._RESOURCES[resource] == {"service": "checkout", "environment": "prod",
                                              "team": "growth"}


def test_exports_with_other_resources_keep_their_own_tags() -> None:
    wire_json._RESOURCES.clear()
    for team in ("growth", "search", "growth", "ads"):
        value = otlp_json(export(span(current()), resource={"service.name": "s", "app.team": team}))
        out = decode_json(value, MSG)
        assert out == decode_json_whole(value, MSG)
        assert out.requests[0].tags["team"] == team


@pytest.mark.parametrize("resource", [
    {"attributes": "not a list"},
    {"attributes": [{"key": 3, "value": {"stringValue": "x"}}]},
    {"attributes": [{"key": "service.name", "value": {"intValue": [1]}}]},
    [],
    "text",
    None,
    {},
    # Converted only when read as a tag: a bad value there rejects the export every time.
    {"attributes": [{"key": "app.team", "value": {"intValue": "twelve"}}]},
    {"attributes": [{"key": "k8s.pod.name", "value": {"intValue": "twelve"}}]},
])
def test_a_resource_of_any_shape_gives_the_whole_decoders_outcome(resource: Any) -> None:
    value = with_resource(GOOD, resource)
    assert_agree(value)
    assert outcome(decode_json, value) == outcome(decode_json_whole, value)


def test_a_resource_key_given_twice_is_checked_as_the_whole_decoder_checks_it() -> None:
    good = orjson.dumps(orjson.loads(GOOD)["resourceSpans"][0]["resource"])
    body = GOOD.replace(b'"resource":' + good,
                        b'"resource":{"attributes":7},"resource":' + good, 1)
    assert body != GOOD
    assert isinstance(assert_agree(body), str)  # the first value is checked, and fails


def test_the_word_resource_in_a_value_changes_nothing() -> None:
    value = otlp_json(export(span(current(**{"app.note": '"resource"'})),
                             resource={"service.name": '"resource"'}))
    out = assert_agree(value)
    assert isinstance(out, Decoded) and out.requests[0].tags["service"] == '"resource"'


def resource_mutations(value: bytes, rnd: random.Random, new: Any) -> bytes | None:
    obj = orjson.loads(value)
    rs = obj["resourceSpans"][0]
    rs["resource"] = json_mutations(rs.get("resource", {}), rnd, new)
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:  # an int past 64 bits, which no JSON log holds
        return None


@SETTINGS
@given(st.sampled_from(GOOD_JSON), st.randoms(use_true_random=False), json_any,
       st.booleans())
def test_any_mutated_export_decodes_as_the_whole_decoder_decodes_it(
        value: bytes, rnd: random.Random, new: Any, in_resource: bool) -> None:
    if in_resource:
        data = resource_mutations(value, rnd, new)
    else:
        try:
            data = orjson.dumps(json_mutations(orjson.loads(value), rnd, new))
        except orjson.JSONEncodeError:
            data = None
    if data is not None:
        assert_agree(data)


def test_ingest_stores_and_rejects_as_the_whole_decoder_does(tmp_path: Any) -> None:
    """Through `Ingestor.process`: good exports, and bad ones (in the resource and elsewhere),
    each stored or rejected with the reason of the whole-export decoder."""
    rnd = random.Random(3)
    values = list(GOOD_JSON)
    values += [with_resource(v, {"attributes": [{"key": "app.x", "value": {"intValue": "?"}}]})
               for v in GOOD_JSON[:3]]
    values += [with_resource(v, {"attributes": {"key": "service.name"}}) for v in GOOD_JSON[3:6]]
    values += [d for v in GOOD_JSON for d in [resource_mutations(v, rnd, "x")] if d is not None]
    msgs = [RawMessage("otlp", 0, i, v) for i, v in enumerate(values)]
    wire_json._RESOURCES.clear()
    batch = Ingestor(load_config(None, env={})).process(msgs, now_ms=1_780_000_000_000)
    rejected = dict(zip(batch.rejected["offset"], batch.rejected["reason"], strict=True))
    stored = set(batch.requests["request_id"])  # an id given twice is stored once
    assert rejected and stored
    for m in msgs:
        assert m.value is not None
        expected = outcome(decode_json_whole, m.value)
        if isinstance(expected, str):
            assert rejected[m.offset] == expected.removeprefix("rejected: ")
        else:
            assert m.offset not in rejected
            assert {r.request_id for r in expected.requests} <= stored
