"""Versions never flip silently: adding `user` v2 leaves every unpinned read on v1 until fstore.yaml says
otherwise, and the schema check (so codegen too) wants that choice written down."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fstore.cli import app
from fstore.errors import SchemaError
from fstore.settings import load_settings
from fstore.store import FeatureStore


def test_an_unpinned_lookup_gets_the_declared_default_else_the_oldest(schema_copy: Any) -> None:
    schema_copy.add_user_v2(default_version=1)
    registry = schema_copy.registry()
    assert registry.versions("user") == [1, 2]
    assert registry.get("user").version == 1
    assert registry.get("user", 2).version == 2

    schema_copy.default_versions["user"] = 2
    assert schema_copy.registry().get("user").version == 2

    schema_copy.default_versions.clear()  # nothing declared: still the oldest, never the newest
    assert schema_copy.registry().get("user").version == 1

    schema_copy.default_versions["user"] = 3
    with pytest.raises(SchemaError, match="default_versions names user v3"):
        schema_copy.registry().get("user")


def test_codegen_refuses_a_second_version_without_a_declared_default(schema_copy: Any) -> None:
    with pytest.raises(subprocess.CalledProcessError) as refused:
        schema_copy.add_user_v2(default_version=None)
    said = refused.value.stdout + refused.value.stderr
    assert "entity user has versions 1, 2 and no default version" in said
    assert "default_versions: {user: 1}" in said

    schema_copy.default_versions["user"] = 1
    schema_copy.codegen()  # the choice written down: the check passes
    assert schema_copy.registry().versions("user") == [1, 2]


def test_every_unpinned_reader_gives_the_same_answer_after_v2(
    schema_copy: Any, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from fstore.api.app import create_app

    monkeypatch.setenv("FSTORE_DESCRIPTOR_SET", str(schema_copy.descriptor_set))
    monkeypatch.setenv("FSTORE_DEFAULT_VERSIONS", json.dumps({"user": 1}))
    spine = tmp_path / "spine.parquet"
    pq.write_table(pa.table({"user_id": [7, 8], "ts": [datetime.now(UTC)] * 2}), spine)

    def answers(label: str) -> dict[str, Any]:
        settings = load_settings()
        with FeatureStore(settings, registry=schema_copy.registry()) as fs:
            sdk = fs.get_online("user", [7, 8])
            out = tmp_path / f"{label}.parquet"
            fs.export_training_set(spine, ["user:age", "user:country"], out, timestamp_column="ts", progress=False)
        with TestClient(create_app(settings)) as client:
            http = client.get("/v1/online/user", params={"id": [7, 8]}).json()
        cli = CliRunner().invoke(app, ["online", "get", "user", "7", "--json"])
        assert cli.exit_code == 0, cli.output
        return {"sdk": sdk, "export": pq.read_table(out).to_pylist(), "http": http, "cli": cli.output}

    settings = load_settings()
    with FeatureStore(settings, registry=schema_copy.registry()) as fs:
        spec = fs.spec("user")
        message = spec.message_class(user_id=7, age=31, country="FR")
        message.event_time.FromDatetime(datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1))
        fs.write_online("user", [message])
        fs.offline.write(spec, fs_table(spec, [message]))
    before = answers("before")
    assert before["sdk"][0] is not None and before["sdk"][1] is None
    assert before["export"][0]["user__age"] == 31

    schema_copy.add_user_v2(default_version=1)
    after = answers("after")
    assert after == before


def fs_table(spec: Any, messages: list[Any]) -> pa.Table:
    from fstore.store.offline.schema import messages_to_table

    now = datetime.now(UTC)
    micros = int(now.timestamp() * 1_000_000)
    return messages_to_table(spec, messages, [micros] * len(messages), [f"m{i}" for i in range(len(messages))])
