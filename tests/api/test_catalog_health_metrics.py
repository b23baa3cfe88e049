"""The catalog (from the registry), /healthz, /readyz against a live and a dead Redis, /metrics counting requests,
and the lifespan closing its store."""

from __future__ import annotations

import re
from typing import Any

import redis
from fastapi.testclient import TestClient

from fstore.api.app import create_app
from fstore.schema.registry import Registry
from fstore.settings import load_settings
from fstore.testing import RedisServer


def test_entity_list_names_versions_owner_description(client: TestClient, registry: Registry) -> None:
    body = client.get("/v1/entities").json()
    by_name = {e["name"]: e for e in body["entities"]}
    assert sorted(by_name) == registry.entities()
    user = registry.get("user")
    assert by_name["user"] == {
        "name": "user",
        "default_version": user.version,
        "latest_version": user.version,
        "versions": registry.versions("user"),
        "owner": user.owner,
        "description": user.description,
    }


def test_entity_detail_has_key_types_ttl_and_descriptions(client: TestClient, registry: Registry) -> None:
    body = client.get("/v1/entities/user").json()
    assert body["name"] == "user" and body["latest_version"] == 1
    (v1,) = body["versions"]
    spec = registry.get("user", 1)
    assert v1["key"] == {
        "name": "user_id",
        "number": 1,
        "type": "int64",
        "kind": "int64",
        "repeated": False,
        "description": spec.key.description,
        "pii": False,
    }
    assert v1["event_time"]["type"] == "timestamp"
    assert v1["ttl_seconds"] == 30 * 86400 and v1["fingerprint"] == spec.fingerprint
    features = {f["name"]: f for f in v1["features"]}
    assert list(features) == spec.feature_names
    assert features["embedding"]["type"] == "repeated float"
    assert features["age"]["pii"] is True and features["age"]["description"] == "Age in whole years."
    assert client.get("/v1/entities/item").json()["versions"][0]["ttl_seconds"] == 0


def test_catalog_of_unknown_entity_is_404(client: TestClient) -> None:
    response = client.get("/v1/entities/customer")
    assert response.status_code == 404 and response.json()["error"] == "unknown_entity"


def test_healthz_and_readyz_with_redis_up(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "detail": ""}
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json()["status"] == "ready"


def test_redis_going_away_gives_503_not_wrong_data(monkeypatch: Any) -> None:
    """A Redis of its own, stopped under a running app: /readyz and reads say unavailable; /healthz stays up."""
    with RedisServer() as server:
        monkeypatch.setenv("FSTORE_REDIS_URL", server.url)
        with TestClient(create_app(load_settings())) as client:
            assert client.get("/readyz").status_code == 200
            assert client.get("/v1/online/user?id=1").json()["rows"] == [None]
            assert client.get("/v1/online/user_orders?id=1").status_code == 200
            server.stop()
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
            assert "online store" in ready.json()["detail"]
            read = client.get("/v1/online/user?id=1")
            assert read.status_code == 503 and read.json()["error"] == "store_unavailable"
            assert "Redis at redis://127.0.0.1" in read.json()["detail"]
            family = client.get("/v1/online/user_orders?id=1")  # an aggregation family's tiles, likewise
            assert family.status_code == 503 and family.json()["error"] == "store_unavailable"
            assert "Redis at redis://127.0.0.1" in family.json()["detail"]
            assert client.get("/healthz").status_code == 200


def sample(exposition: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample whose labels include `labels` (0 when absent)."""
    total = 0.0
    for line in exposition.splitlines():
        match = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match[3])
    return total


def test_metrics_count_requests_latency_rows_misses_errors(client: TestClient) -> None:
    route = "/v1/online/{entity}"
    for _ in range(3):
        client.get("/v1/online/user?id=1&id=2&id=404040")  # 2 rows, 1 miss each
    client.post("/v1/online/user", json={"ids": [3]})
    client.get("/v1/online/user?id=1&features=shoe_size")
    client.get("/v1/online/no_such_entity?id=1")
    client.get("/v1/online/user?id=1&id=2&id=3&id=4&id=5&id=6&version=x")

    text = client.get("/metrics").text
    assert sample(text, "fstore_api_requests_total", route=route, method="GET", entity="user", status="200") == 3
    assert sample(text, "fstore_api_requests_total", route=route, method="POST", entity="user", status="200") == 1
    assert sample(text, "fstore_api_request_duration_seconds_count", route=route, method="GET", entity="user") == 5
    assert sample(text, "fstore_api_request_duration_seconds_bucket", route=route, entity="user", le="+Inf") == 6
    assert sample(text, "fstore_api_rows_returned_total", entity="user", version="1") == 7
    assert sample(text, "fstore_api_row_misses_total", entity="user", version="1") == 3
    assert sample(text, "fstore_api_errors_total", route=route, entity="user", error="unknown_feature") == 1
    assert sample(text, "fstore_api_errors_total", route=route, entity="user", error="invalid_request") == 1
    # An entity name a client invents is not a new label value.
    assert sample(text, "fstore_api_errors_total", route=route, entity="other", error="unknown_entity") == 1
    assert "no_such_entity" not in text


def test_metrics_label_unmatched_paths_by_a_constant(client: TestClient) -> None:
    client.get("/wp-admin/setup.php")
    text = client.get("/metrics").text
    assert sample(text, "fstore_api_requests_total", route="unmatched", status="404") == 1
    assert "wp-admin" not in text


def test_lifespan_closes_its_redis_connections(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    before = len(admin.client_list())
    with TestClient(create_app(load_settings())) as client:
        assert client.get("/v1/online/user?id=1").status_code == 200
        assert len(admin.client_list()) > before
    assert len(admin.client_list()) == before
    admin.close()


def test_a_store_passed_in_stays_open_after_shutdown(redis_url: str, seeded: None) -> None:
    from fstore.store import FeatureStore

    with FeatureStore(load_settings()) as fs:
        with TestClient(create_app(store=fs)) as client:
            assert client.get("/v1/online/user?id=2&features=age").json()["rows"][0]["age"] == 45
        (row,) = fs.get_online("user", [2], features=["age"])  # still the caller's, still open
        assert row is not None and row["age"] == 45
