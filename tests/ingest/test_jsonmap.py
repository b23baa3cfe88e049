"""The fast JSON parser gives exactly what protobuf's reference `json_format.Parse` gives, errors included."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from fstore.ingest.jsonmap import JsonEventParser
from fstore.schema.registry import Registry


def reference(cls: type, line: str) -> bytes | str:
    message = cls()
    try:
        json_format.Parse(line, message)
    except json_format.ParseError:
        return "error"
    return bytes(message.SerializeToString())


def fast(parser: JsonEventParser, line: str) -> bytes | str:
    try:
        return bytes(parser.parse(line).SerializeToString())
    except json_format.ParseError:
        return "error"


CASES = [
    '{"userId": "42", "eventTime": "2026-11-01T03:00:00.123456Z", "age": 30, "favoriteCategories": ["a"]}',
    '{"user_id": 42, "event_time": "2026-11-01T03:00:00Z", "embedding": [0.5, 1, -2.25], "isPremium": false}',
    '{"userId": "x"}',
    '{"age": "thirty"}',
    '{"age": 3.0}',
    '{"age": 4294967296}',
    '{"nope": 1}',
    "[1]",
    "{not json",
    '{"eventTime": "2026-11-01T03:00:00.123456789Z"}',
    '{"eventTime": "2026-11-01T03:00:00+02:00"}',
    '{"eventTime": "2026-11-01 03:00:00"}',
    '{"user_id": 5, "userId": 6}',
    '{"avgOrderValue": "NaN", "embedding": ["Infinity"]}',
    '{"country": null, "age": null}',
    '{"favoriteCategories": "books"}',
    '{"isPremium": 1}',
    '{"embedding": [1e300]}',
    '{"embedding": [3.4e38], "avgOrderValue": 1e300}',
    '{"lifetimeOrders": "99999999999999999999999"}',
]


@pytest.mark.parametrize("line", CASES)
def test_same_as_reference(registry: Registry, line: str) -> None:
    spec = registry.get("user")
    assert fast(JsonEventParser(spec), line) == reference(spec.message_class, line)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3),
    max_leaves=5,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["userId", "user_id", "eventTime", "age", "country", "isPremium", "embedding", "lifetimeOrders"]
        ),
        json_values | st.sampled_from(["2026-11-01T03:00:00Z", "7", "-3"]),
        max_size=6,
    )
)
def test_random_documents_same_as_reference(registry: Registry, document: dict[str, object]) -> None:
    spec = registry.get("user")
    line = json.dumps(document)
    assert fast(JsonEventParser(spec), line) == reference(spec.message_class, line)
