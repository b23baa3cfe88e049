"""GET/POST /v1/online/{entity} against the real app and a real Redis: values, order, misses, every error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fstore.cli import app
from fstore.settings import load_settings
from fstore.store import FeatureStore
from tests.api.conftest import user

USER_FIELDS = {
    "user_id", "event_time", "age", "country", "is_premium", "lifetime_orders", "avg_order_value",
    "favorite_categories", "embedding",
}  # fmt: skip


def error_of(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    return str(body["detail"])


def test_get_one_user_returns_every_feature_typed_as_json(client: TestClient) -> None:
    response = client.get("/v1/online/user", params={"id": 1})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["entity"] == "user" and body["version"] == 1
    (row,) = body["rows"]
    assert set(row) == USER_FIELDS
    assert row["user_id"] == 1
    assert row["age"] == 31 and row["country"] == "FR" and row["is_premium"] is True
    assert row["lifetime_orders"] == 12 and row["avg_order_value"] == 42.5
    assert row["favorite_categories"] == ["books", "music"] and row["embedding"] == [0.5] * 16
    assert row["event_time"].endswith("Z")  # RFC 3339, UTC


def test_rows_come_back_in_request_order_with_null_for_unknown_and_expired(client: TestClient) -> None:
    # 4 was written with an event time past its 30-day TTL; 404040 never existed.
    response = client.get("/v1/online/user?id=3&id=404040&id=1&id=4&id=2&features=country")
    assert response.status_code == 200
    rows = response.json()["rows"]
    assert rows == [
        {"user_id": 3, "event_time": rows[0]["event_time"], "country": "BR"},
        None,
        {"user_id": 1, "event_time": rows[2]["event_time"], "country": "FR"},
        None,
        {"user_id": 2, "event_time": rows[4]["event_time"], "country": "JP"},
    ]


def test_unset_optional_features_are_null(client: TestClient) -> None:
    row = client.get("/v1/online/user?id=3&features=age,country").json()["rows"][0]
    assert row["age"] is None and row["country"] == "BR"


@pytest.mark.parametrize("query", ["features=age,country", "features=age&features=country", "features=age, country"])
def test_features_comma_separated_or_repeated(client: TestClient, query: str) -> None:
    row = client.get(f"/v1/online/user?id=2&{query}").json()["rows"][0]
    assert set(row) == {"user_id", "event_time", "age", "country"}
    assert (row["age"], row["country"]) == (45, "JP")


def test_post_matches_get_and_takes_int64_ids_as_numbers_or_strings(client: TestClient) -> None:
    by_get = client.get("/v1/online/user?id=1&id=2&id=9&features=age&version=1").json()
    by_post = client.post("/v1/online/user", json={"ids": [1, "2", 9], "features": ["age"], "version": 1}).json()
    assert by_post == by_get
    assert [r and r["age"] for r in by_post["rows"]] == [31, 45, None]


def test_string_keys_and_default_version(client: TestClient) -> None:
    body = client.post("/v1/online/item", json={"ids": ["sku-2", "sku-1", "nope"]}).json()
    assert body["entity"] == "item" and body["version"] == 1
    assert body["rows"][0]["stock"] == 7 and body["rows"][1]["tags"] == ["new"] and body["rows"][2] is None


def test_unknown_entity_is_404(client: TestClient) -> None:
    detail = error_of(client.get("/v1/online/customer?id=1"), 404, "unknown_entity")
    assert "'customer'" in detail and "user" in detail  # names it and the known ones
    error_of(client.post("/v1/online/customer", json={"ids": [1]}), 404, "unknown_entity")


def test_unknown_feature_is_422_naming_it(client: TestClient) -> None:
    detail = error_of(client.get("/v1/online/user?id=1&features=age,shoe_size"), 422, "unknown_feature")
    assert "'shoe_size'" in detail
    detail = error_of(client.post("/v1/online/user", json={"ids": [1], "features": ["height"]}), 422, "unknown_feature")
    assert "'height'" in detail


def test_empty_feature_name_is_422(client: TestClient) -> None:
    error_of(client.get("/v1/online/user?id=1&features="), 422, "unknown_feature")
    error_of(client.get("/v1/online/user?id=1&features=age,,country"), 422, "unknown_feature")


def test_unknown_version_is_422_naming_it(client: TestClient) -> None:
    detail = error_of(client.get("/v1/online/user?id=1&version=7"), 422, "unknown_version")
    assert "unknown version 7" in detail and "known versions: 1" in detail
    error_of(client.post("/v1/online/user", json={"ids": [1], "version": 0}), 422, "unknown_version")


def test_non_integer_version_is_422(client: TestClient) -> None:
    detail = error_of(client.get("/v1/online/user?id=1&version=latest"), 422, "invalid_request")
    assert "version" in detail and "'latest'" in detail


@pytest.mark.parametrize(
    ("entity", "query", "named"),
    [
        ("user", "id=abc", "'abc'"),
        ("user", "id=1&id=2.5", "'2.5'"),
        ("user", f"id={2**63}", str(2**63)),  # outside int64
        ("user", "id=9_0_0_0_0_4", "'9_0_0_0_0_4'"),  # Python's int() reads it as 900004
        ("user", "id=%D9%A4%D9%A2", "'٤٢'"),  # Arabic-Indic digits: int() reads them as 42
        ("user", "id=1e3", "'1e3'"),
        ("user", "id=" + "1" * 80, "(82 characters)"),  # the message quotes the id, cut
    ],
)
def test_bad_id_in_query_is_422_naming_it(client: TestClient, entity: str, query: str, named: str) -> None:
    detail = error_of(client.get(f"/v1/online/{entity}?{query}"), 422, "invalid_id")
    assert named in detail


@pytest.mark.parametrize(
    ("entity", "ids", "code"),
    [
        ("user", ["abc"], "invalid_id"),
        ("item", [5], "invalid_id"),  # item keys are strings
        ("user", [1.5], "invalid_request"),
        ("user", [True], "invalid_request"),  # never silently id 1
        ("user", [[1]], "invalid_request"),
        ("user", [None], "invalid_request"),
    ],
)
def test_bad_id_in_body_is_422(client: TestClient, entity: str, ids: list[Any], code: str) -> None:
    detail = error_of(client.post(f"/v1/online/{entity}", json={"ids": ids}), 422, code)
    assert "ids" in detail or "id" in detail


def test_empty_id_is_422(client: TestClient) -> None:
    assert "id" in error_of(client.get("/v1/online/item?id="), 422, "invalid_request")
    assert "ids" in error_of(client.post("/v1/online/item", json={"ids": [""]}), 422, "invalid_request")


def test_missing_ids_is_422(client: TestClient) -> None:
    assert "id" in error_of(client.get("/v1/online/user"), 422, "invalid_request")
    assert "ids" in error_of(client.post("/v1/online/user", json={}), 422, "invalid_request")
    assert "ids" in error_of(client.post("/v1/online/user", json={"ids": []}), 422, "invalid_request")


def test_malformed_body_is_422(client: TestClient) -> None:
    response = client.post("/v1/online/user", content=b"{not json", headers={"content-type": "application/json"})
    error_of(response, 422, "invalid_request")
    error_of(client.post("/v1/online/user", json=[1, 2]), 422, "invalid_request")
    detail = error_of(client.post("/v1/online/user", json={"ids": [1], "feature": ["age"]}), 422, "invalid_request")
    assert "feature" in detail  # a misspelt key is named, not ignored


def test_more_ids_than_max_ids_is_413(make_client: Any, seeded: None) -> None:
    client = make_client(api={"max_ids": 3})
    assert client.get("/v1/online/user?id=1&id=2&id=3").status_code == 200
    detail = error_of(client.get("/v1/online/user?id=1&id=2&id=3&id=4"), 413, "too_many_ids")
    assert "at most 3" in detail and "got 4" in detail
    error_of(client.post("/v1/online/user", json={"ids": list(range(10))}), 413, "too_many_ids")


def test_default_max_ids_is_1000(client: TestClient) -> None:
    assert client.post("/v1/online/user", json={"ids": list(range(1000))}).status_code == 200
    error_of(client.post("/v1/online/user", json={"ids": list(range(1001))}), 413, "too_many_ids")


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    error_of(client.get("/v2/online/user"), 404, "not_found")
    error_of(client.delete("/v1/online/user"), 405, "method_not_allowed")


def test_non_finite_floats_read_as_strings_never_as_null(client: TestClient) -> None:
    """NaN and ±Inf come back as protobuf's JSON mapping writes them ("NaN", "Infinity", "-Infinity"), so a
    model can tell a broken value from a missing one (null); the CLI's --json says the same."""
    nan, inf = float("nan"), float("inf")
    with FeatureStore(load_settings()) as fs:
        fs.write_online("user", [user(fs, 5, avg_order_value=nan, embedding=[nan, -inf, 1.0, inf] + [0.0] * 12)])
        fs.write_online("user", [user(fs, 6, age=3)])
    rows = client.get("/v1/online/user?id=5&id=6&features=avg_order_value,embedding,age").json()["rows"]
    assert rows[0]["avg_order_value"] == "NaN"
    assert rows[0]["embedding"][:4] == ["NaN", "-Infinity", 1.0, "Infinity"]
    assert rows[1]["avg_order_value"] is None and rows[1]["embedding"] == []  # unset stays null
    cli = CliRunner().invoke(app, ["online", "get", "user", "5", "--features", "avg_order_value", "--json"])
    assert json.loads(cli.output)["rows"][0]["avg_order_value"] == "NaN"


def test_405_names_every_method_the_path_serves(client: TestClient) -> None:
    response = client.put("/v1/online/user", json={"ids": [1]})
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"
    assert response.headers["allow"] == "GET, POST"


def test_a_field_added_while_serving_is_served_without_a_restart(make_client: Any, schema_copy: Any) -> None:
    client = make_client(descriptor_set=str(schema_copy.descriptor_set))
    assert client.get("/v1/online/user?id=7&features=churn_score").status_code == 422
    schema_copy.add_user_field()
    settings = load_settings(descriptor_set=str(schema_copy.descriptor_set))
    with FeatureStore(settings, registry=schema_copy.registry()) as fs:
        fs.write_online("user", [user(fs, 7, churn_score=0.5)])

    response = client.get("/v1/online/user?id=7&features=churn_score")
    assert response.status_code == 200 and response.json()["rows"][0]["churn_score"] == 0.5
    fields = [f["name"] for f in client.get("/v1/entities/user").json()["versions"][0]["features"]]
    assert "churn_score" in fields


def test_an_aggregation_family_is_read_like_an_entity(client: TestClient) -> None:
    """`user_orders` (declared by `order` v1) over HTTP and the CLI: one row per key, its features now, and a
    key with no orders reads as count 0 / null."""
    import time

    from fstore.store.online.tiles import TileEvent, TileStore

    with FeatureStore.from_config() as fs:
        family = fs.registry.family("user_orders")
        tiles = TileStore.beside(fs.online)
        now = time.time_ns() // 1_000
        tiles.apply(family, [
            TileEvent(7, now - 60_000_000, now, "m1", False, {"amount": 20.5, "status": "paid"}),
            TileEvent(7, now - 30_000_000, now, "m2", False, {"amount": 10.0, "status": "shipped"}),
        ])  # fmt: skip
        tiles.close()
    body = client.get(
        "/v1/online/user_orders", params={"id": [7, 8], "features": "order_count_1h,amount_sum_7d,last_status"}
    ).json()
    assert body["entity"] == "user_orders" and body["version"] == 1
    assert body["rows"] == [
        {"user_id": 7, "order_count_1h": 2, "amount_sum_7d": 30.5, "last_status": "shipped"},
        {"user_id": 8, "order_count_1h": 0, "amount_sum_7d": 0.0, "last_status": None},
    ]
    assert client.get("/v1/online/user_orders", params={"id": "x"}).status_code == 422
    assert client.get("/v1/online/user_orders", params={"id": 7, "features": "height"}).status_code == 422
    (listed,) = client.get("/v1/entities").json()["families"]
    assert (listed["name"], listed["source"], listed["group_by"]) == ("user_orders", "order/v1", "user_id")
    assert {"name": "amount_sum_7d", "function": "sum", "field": "amount", "window": "7d",
            "description": "Spend in the last 7 days, EUR."} in listed["features"]  # fmt: skip
    cli = CliRunner().invoke(app, ["online", "get", "user_orders", "7", "--features", "order_count_7d", "--json"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.output)["rows"] == [{"user_id": 7, "order_count_7d": 2}]
