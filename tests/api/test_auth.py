"""API keys: off by default; when on, 401 without a valid bearer key and 403 for an entity the key may not read."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from fstore.api.auth import Authenticator, hash_token
from fstore.api.errors import NotAuthenticatedError
from fstore.settings import ApiSettings

AsKey = Callable[[str], dict[str, str]]
ONLINE = "/v1/online/user?id=1"


def test_auth_is_off_by_default(client: TestClient) -> None:
    assert client.get(ONLINE).status_code == 200
    assert client.get("/v1/entities/user").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "user-reader-token"},  # the token without its scheme
    ],
)
def test_missing_key_is_401(auth_client: TestClient, headers: dict[str, str]) -> None:
    for response in (
        auth_client.get(ONLINE, headers=headers),
        auth_client.post("/v1/online/user", json={"ids": [1]}, headers=headers),
        auth_client.get("/v1/entities", headers=headers),
        auth_client.get("/v1/entities/user", headers=headers),
    ):
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "not_authenticated"
        assert response.headers["www-authenticate"] == "Bearer"


def test_invalid_key_is_401(auth_client: TestClient) -> None:
    response = auth_client.get(ONLINE, headers={"Authorization": "Bearer not-a-key"})
    assert response.status_code == 401 and response.json()["detail"] == "invalid API key"
    # The stored hash itself is not a key.
    response = auth_client.get(ONLINE, headers={"Authorization": f"Bearer {hash_token('admin-token')}"})
    assert response.status_code == 401


def test_key_reads_only_its_entities(auth_client: TestClient, as_key: AsKey) -> None:
    assert auth_client.get(ONLINE, headers=as_key("user")).json()["rows"][0]["user_id"] == 1
    forbidden = auth_client.get(ONLINE, headers=as_key("item"))
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
    assert "'item-reader' may not read entity 'user'" in forbidden.json()["detail"]
    assert auth_client.post("/v1/online/item", json={"ids": ["sku-1"]}, headers=as_key("item")).status_code == 200
    assert auth_client.post("/v1/online/item", json={"ids": ["sku-1"]}, headers=as_key("user")).status_code == 403
    assert auth_client.get("/v1/entities/item", headers=as_key("user")).status_code == 403


def test_wildcard_key_reads_everything(auth_client: TestClient, as_key: AsKey) -> None:
    for path in (ONLINE, "/v1/online/item?id=sku-1", "/v1/entities/user", "/v1/entities/item"):
        assert auth_client.get(path, headers=as_key("admin")).status_code == 200


def test_catalog_lists_only_what_the_key_may_read(auth_client: TestClient, as_key: AsKey) -> None:
    names = [e["name"] for e in auth_client.get("/v1/entities", headers=as_key("user")).json()["entities"]]
    assert names == ["user"]
    names = [e["name"] for e in auth_client.get("/v1/entities", headers=as_key("admin")).json()["entities"]]
    assert names == ["item", "order", "user"]


def test_unknown_entity_is_403_for_a_restricted_key_and_404_for_a_wildcard(
    auth_client: TestClient, as_key: AsKey
) -> None:
    # A restricted key learns nothing about which other entities exist.
    assert auth_client.get("/v1/online/customer?id=1", headers=as_key("user")).status_code == 403
    assert auth_client.get("/v1/online/customer?id=1", headers=as_key("admin")).status_code == 404


def test_probes_and_metrics_need_no_key(auth_client: TestClient) -> None:
    assert auth_client.get("/healthz").status_code == 200
    assert auth_client.get("/readyz").status_code == 200
    assert auth_client.get("/metrics").status_code == 200


def test_auth_errors_are_counted(auth_client: TestClient, as_key: AsKey) -> None:
    auth_client.get(ONLINE)
    auth_client.get(ONLINE, headers=as_key("item"))
    text = auth_client.get("/metrics").text
    assert 'error="not_authenticated"' in text and 'error="forbidden"' in text


def test_openapi_declares_the_bearer_scheme_only_with_auth_on(client: TestClient, auth_client: TestClient) -> None:
    spec = auth_client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/online/{entity}"]["get"]["security"] == [{"bearer": []}]
    spec = client.get("/openapi.json").json()
    assert "securitySchemes" not in spec["components"]
    assert "security" not in spec["paths"]["/v1/online/{entity}"]["get"]


def test_authenticator_with_auth_on_and_no_keys_refuses_everyone() -> None:
    authenticator = Authenticator(ApiSettings(auth=True))
    with pytest.raises(NotAuthenticatedError):
        authenticator.authenticate("Bearer anything")
