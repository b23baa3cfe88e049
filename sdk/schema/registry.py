"""Entity specs, built from the descriptor set that `fstore codegen` writes.

This is the only module that reads fstore's proto options. Everything else (ingest, the stores,
the API, codegen's docs) learns about entities from `EntitySpec`, so a schema is read one way.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from fstore.errors import FstoreError, SchemaError, UnknownEntityError, UnknownFeatureError, UnknownVersionError
from fstore.schema.aggregations import FamilySpec, family_spec, family_violations

log = logging.getLogger("fstore.schema")
ENTITY_PACKAGE = re.compile(r"^fstore\.entities\.(?P<name>[a-z][a-z0-9_]*)\.v(?P<version>[1-9][0-9]*)$")
OPTIONS_FILE = "fstore/options.proto"
AGGREGATIONS_OPTION = 51235  # the `(fstore.aggregations)` extension's field number
FINGERPRINTS_FILE = "fingerprints.json"
TIMESTAMP = "google.protobuf.Timestamp"

_SCALAR_KINDS = {
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_SINT32: "int32",
    FieldDescriptor.TYPE_SFIXED32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_SINT64: "int64",
    FieldDescriptor.TYPE_SFIXED64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_FIXED32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_FIXED64: "uint64",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_DOUBLE: "double",
}
KEY_KINDS = ("int64", "string")


@dataclass(frozen=True)
class FieldSpec:
    """One field of an entity version. `kind` is one of the scalar kinds above or "timestamp"."""

    name: str
    number: int
    kind: str
    repeated: bool
    description: str = ""
    pii: bool = False
    has_presence: bool = False

    @property
    def type_name(self) -> str:
        """The type as written in docs and the catalog, e.g. `repeated float`."""
        return f"repeated {self.kind}" if self.repeated else self.kind


@dataclass(frozen=True)
class EntitySpec:
    """Everything the store needs to know about one entity version."""

    name: str
    version: int
    full_name: str
    proto_file: str
    key: FieldSpec
    event_time: FieldSpec
    features: tuple[FieldSpec, ...]
    ttl_seconds: int
    owner: str
    description: str
    fingerprint: str
    descriptor: Descriptor = field(compare=False, repr=False)
    # Fingerprints of earlier, compatible shapes of this version (fields added since): events from producers
    # built before the addition are still valid. Kept by codegen in fingerprints.json beside the descriptor set.
    earlier_fingerprints: frozenset[str] = frozenset()

    def knows_fingerprint(self, value: str) -> bool:
        return value == self.fingerprint or value in self.earlier_fingerprints

    @property
    def ref(self) -> str:
        """`user/v1`: how logs, keys and manifests name an entity version."""
        return f"{self.name}/v{self.version}"

    @property
    def table_name(self) -> str:
        """Offline table name, e.g. `user_v1`."""
        return f"{self.name}_v{self.version}"

    @property
    def fields(self) -> tuple[FieldSpec, ...]:
        """Key, event time, then the features, in declaration order of the features."""
        return (self.key, self.event_time, *self.features)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @functools.cached_property
    def message_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.descriptor)

    def feature(self, name: str) -> FieldSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise UnknownFeatureError(self.name, self.version, name, self.feature_names)

    def select(self, names: Iterable[str] | None) -> tuple[FieldSpec, ...]:
        """The features named (all when None), raising on the first unknown name."""
        if names is None:
            return self.features
        return tuple(self.feature(n) for n in names)


@dataclass(frozen=True)
class RegistrySource:
    """What a registry is built from: a descriptor set, and every fingerprint each entity version has had.
    A few kB that pickle: the ingest job's steps carry it, so its workers need no feature repo on disk."""

    descriptor_set: bytes
    fingerprints: dict[str, list[str]] = field(default_factory=dict, compare=False)
    # fstore.yaml's `default_versions`: which version an unpinned read of an entity gets (see Registry.get).
    default_versions: dict[str, int] = field(default_factory=dict, compare=False)

    @functools.cached_property
    def digest(self) -> str:
        extra = json.dumps([self.fingerprints, self.default_versions], sort_keys=True).encode()
        return hashlib.sha256(self.descriptor_set + extra).hexdigest()


class Registry:
    """All entity versions of one descriptor set, looked up by name and version.

    An unpinned lookup (`get(entity)`: the SDK, CLI, HTTP API, export and backfill when no version is named)
    gets the entity's default version: the one fstore.yaml's `default_versions` names, else its oldest. So
    adding v2 changes nothing for unpinned readers until someone names v2 there; `fstore schema check` asks
    for that choice as soon as an entity has two versions."""

    def __init__(
        self, specs: Iterable[EntitySpec], source: RegistrySource | None = None,
        default_versions: dict[str, int] | None = None, families: Iterable[FamilySpec] = (),
    ) -> None:  # fmt: skip
        self.source = source
        self.default_versions = dict(default_versions if default_versions is not None else
                                     (source.default_versions if source else {}))  # fmt: skip
        self._specs: dict[str, dict[int, EntitySpec]] = {}
        self._by_fingerprint: dict[str, EntitySpec] = {}
        for spec in specs:
            versions = self._specs.setdefault(spec.name, {})
            if spec.version in versions:
                raise SchemaError(f"entity {spec.name!r} v{spec.version} is declared twice")
            versions[spec.version] = spec
            self._by_fingerprint[spec.fingerprint] = spec
        self._families: dict[str, FamilySpec] = {}
        for family in families:
            if family.name in self._specs or family.name in self._families:
                raise SchemaError(f"aggregation family {family.name!r} is declared twice, or is an entity's name")
            self._families[family.name] = family

    @classmethod
    def from_descriptor_set(
        cls, data: bytes | Path, fingerprints: dict[str, list[str]] | None = None,
        default_versions: dict[str, int] | None = None,
    ) -> Registry:  # fmt: skip
        """`fingerprints`: entity ref (`user/v1`) -> every fingerprint that version has had (fingerprints.json);
        when None and `data` is a path, the fingerprints.json beside it is read if present.
        `default_versions`: entity -> the version unpinned reads get (fstore.yaml)."""
        if fingerprints is None and isinstance(data, Path):
            fingerprints = read_fingerprints(data.with_name(FINGERPRINTS_FILE))
        raw = data.read_bytes() if isinstance(data, Path) else data
        fds = descriptor_pb2.FileDescriptorSet.FromString(raw)
        pool = descriptor_pool.DescriptorPool()
        for file_proto in fds.file:
            pool.Add(file_proto)
        options = OptionsReader(pool)
        specs, families = [], []
        for file_proto in fds.file:
            if not ENTITY_PACKAGE.match(file_proto.package):
                continue
            for message in file_proto.message_type:
                desc = pool.FindMessageTypeByName(f"{file_proto.package}.{message.name}")
                spec = entity_spec(desc, options)
                earlier = frozenset((fingerprints or {}).get(spec.ref, ())) - {spec.fingerprint}
                specs.append(dataclasses.replace(spec, earlier_fingerprints=earlier))
                declared = options.aggregations(desc)
                if declared is not None:
                    problems = family_violations(spec, declared)
                    if problems:
                        raise SchemaError("\n".join(problems))
                    families.append(family_spec(declared, specs[-1]))
        source = RegistrySource(raw, dict(fingerprints or {}), dict(default_versions or {}))
        return cls(specs, source, families=families)

    @classmethod
    def from_source(cls, source: RegistrySource) -> Registry:
        return cls.from_descriptor_set(source.descriptor_set, source.fingerprints, source.default_versions)

    @classmethod
    def default(cls) -> Registry:
        """The registry of the descriptor set the settings name (`descriptor_set` in fstore.yaml), with the
        settings' `default_versions`."""
        from fstore.settings import get_settings

        settings = get_settings()
        return cls.load(settings.descriptor_set, settings.default_versions)

    @classmethod
    def load(cls, path: Path, default_versions: dict[str, int] | None = None) -> Registry:
        """The registry of the descriptor set at `path` (and the fingerprints.json beside it), read once."""
        return _load(str(path), tuple(sorted((default_versions or {}).items())))

    def entities(self) -> list[str]:
        return sorted(self._specs)

    def versions(self, entity: str) -> list[int]:
        return sorted(self._versions(entity))

    def get(self, entity: str, version: int | None = None) -> EntitySpec:
        versions = self._versions(entity)
        if version is None:
            version = self.default_version(entity)
        try:
            return versions[version]
        except (KeyError, TypeError):
            raise UnknownVersionError(entity, version, sorted(versions)) from None

    def default_version(self, entity: str) -> int:
        """The version an unpinned read of `entity` gets: fstore.yaml's `default_versions`, else the oldest."""
        versions = self._versions(entity)
        declared = self.default_versions.get(entity)
        if declared is None:
            return min(versions)
        if declared not in versions:
            raise SchemaError(
                f"fstore.yaml: default_versions names {entity} v{declared}, which the schemas do not declare "
                f"(versions: {', '.join(map(str, sorted(versions)))}); name one of them"
            )
        return declared

    def undeclared_defaults(self) -> list[str]:
        """Entities with several versions and no `default_versions` entry: `fstore schema check` refuses them,
        so that which version unpinned readers get is always a choice someone wrote down."""
        return [e for e in self.entities() if len(self._specs[e]) > 1 and e not in self.default_versions]

    def families(self) -> list[str]:
        """Aggregation families (docs/aggregations.md), read like entities: `family:feature`."""
        return sorted(self._families)

    def is_family(self, name: str) -> bool:
        """Whether `name` is an aggregation family (a set lookup: readers ask on every read)."""
        return name in self._families

    def families_of(self, spec: EntitySpec) -> list[FamilySpec]:
        """The aggregation families computed from this entity version's events."""
        return [f for f in self._families.values() if f.source.ref == spec.ref]

    def family(self, name: str) -> FamilySpec:
        try:
            return self._families[name]
        except KeyError:
            raise UnknownEntityError(name, self.entities() + self.families()) from None

    def by_fingerprint(self, fingerprint: str) -> EntitySpec | None:
        return self._by_fingerprint.get(fingerprint)

    def __iter__(self) -> Any:
        return iter([self._specs[e][v] for e in self.entities() for v in self.versions(e)])

    def _versions(self, entity: str) -> dict[int, EntitySpec]:
        try:
            return self._specs[entity]
        except KeyError:
            if entity in self._families:
                raise FamilyNotServedError(entity) from None
            raise UnknownEntityError(entity, self.entities()) from None


class FamilyNotServedError(UnknownEntityError):
    """An aggregation family named where an entity is needed (a backfill, a write, a materialize)."""

    def __init__(self, family: str) -> None:
        FstoreError.__init__(
            self,
            f"{family!r} is an aggregation family, computed from its source entity's events: read it online "
            f"(fs.get_online, `fstore online get {family}`, GET /v1/online/{family}) or export it ({family}:*); "
            "write, backfill or materialize its source entity instead",
        )
        self.entity = family


@functools.lru_cache(maxsize=8)
def _load(path: str, default_versions: tuple[tuple[str, int], ...] = ()) -> Registry:
    if not Path(path).is_file():
        raise SchemaError(
            f"no descriptor set at {path}: run `fstore codegen` in your feature repo, or set `descriptor_set` in "
            "fstore.yaml (FSTORE_DESCRIPTOR_SET) to the one it wrote"
        )
    return Registry.from_descriptor_set(Path(path), default_versions=dict(default_versions))


class DescriptorSetWatcher:
    """Notices a rewritten descriptor set (`fstore codegen` while a process runs): `newer(current)` is the
    registry of the file when it differs from `current`, else None. One stat per call; the file is read only
    when it changed since the last call (the first call reads it: it may have changed since the start)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None

    def newer(self, current: Registry) -> Registry | None:
        seen = _file_signature(self.path)
        if seen is None or seen == self._seen:
            return None  # no file (a Dataflow worker), or unchanged
        self._seen = seen
        try:
            registry = Registry.from_descriptor_set(self.path, default_versions=current.default_versions)
        except Exception as exc:  # a half-written file, or a broken schema: keep the registry in use
            log.warning("the descriptor set %s changed but cannot be read (%s); keeping the one loaded", self.path, exc)
            return None
        assert registry.source is not None
        if current.source is not None and registry.source.digest == current.source.digest:
            return None
        log.info("reloaded the registry from %s: entities %s", self.path, ", ".join(registry.entities()))
        return registry


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    """What tells a rewritten descriptor set (or fingerprints.json beside it) from the one last read."""
    try:
        main = path.stat()
    except OSError:
        return None
    try:
        prints = path.with_name(FINGERPRINTS_FILE).stat().st_mtime_ns
    except OSError:
        prints = 0
    return main.st_mtime_ns, main.st_size, prints


def read_fingerprints(path: Path) -> dict[str, list[str]]:
    return dict(json.loads(path.read_text())) if path.is_file() else {}


class OptionsReader:
    """Reads `(fstore.entity)` / `(fstore.field)` options through dynamic classes of the same pool,
    so no generated code is imported (the descriptor set is all a Dataflow worker needs)."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool
        try:
            self._entity_ext: Any = pool.FindExtensionByName("fstore.entity")
            self._field_ext: Any = pool.FindExtensionByName("fstore.field")
        except KeyError:
            raise SchemaError(f"the descriptor set lacks {OPTIONS_FILE}") from None
        try:  # absent from descriptor sets made with an options file that predates aggregation families
            self._aggregations_ext: Any = pool.FindExtensionByName("fstore.aggregations")
        except KeyError:
            self._aggregations_ext = None
        self._message_options = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("google.protobuf.MessageOptions")
        )
        self._field_options = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("google.protobuf.FieldOptions")
        )

    def entity(self, desc: Descriptor) -> Any | None:
        opts = self._message_options.FromString(desc.GetOptions().SerializeToString())
        return opts.Extensions[self._entity_ext] if opts.HasExtension(self._entity_ext) else None

    def aggregations(self, desc: Descriptor) -> Any | None:
        if self._aggregations_ext is None:
            return None
        opts = self._message_options.FromString(desc.GetOptions().SerializeToString())
        return opts.Extensions[self._aggregations_ext] if opts.HasExtension(self._aggregations_ext) else None

    def field(self, fd: FieldDescriptor) -> Any | None:
        opts = self._field_options.FromString(fd.GetOptions().SerializeToString())
        return opts.Extensions[self._field_ext] if opts.HasExtension(self._field_ext) else None


def fingerprint(desc: Descriptor) -> str:
    """A stable hash of one message's shape and options (16 hex digits), sent by publishers so
    the ingest job can refuse events produced from a schema it does not know."""
    proto = descriptor_pb2.DescriptorProto()
    desc.CopyToProto(proto)
    options = proto.options.SerializeToString()
    kept = _without_field(options, AGGREGATIONS_OPTION)
    if kept != options:  # an aggregation family says what is computed from the events, not what they are
        proto.options.Clear()
        proto.options.MergeFromString(kept)
    payload = desc.file.package.encode() + b"\0" + proto.SerializeToString(deterministic=True)
    return hashlib.sha256(payload).hexdigest()[:16]


def _without_field(data: bytes, number: int) -> bytes:
    """Serialized message `data` without the top-level field `number` (protobuf wire format)."""
    out, i = bytearray(), 0
    while i < len(data):
        start = i
        tag, i = _varint(data, i)
        wire = tag & 7
        if wire == 0:
            _, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise SchemaError(f"unexpected wire type {wire} in message options")
        if tag >> 3 != number:
            out += data[start:i]
    return bytes(out)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


def schema_violations(desc: Descriptor, options: OptionsReader) -> list[str]:
    """fstore's own rules for one entity message, each violation naming the field."""
    where = f"{desc.file.name}: {desc.full_name}"
    problems: list[str] = []
    match = ENTITY_PACKAGE.match(desc.file.package)
    entity_opts = options.entity(desc)
    if match is None:
        problems.append(f"{where}: package must look like fstore.entities.<name>.v<N>")
    if entity_opts is None or not entity_opts.name:
        problems.append(f"{where}: missing option (fstore.entity).name")
    elif match is not None and entity_opts.name != match["name"]:
        problems.append(
            f"{where}: (fstore.entity).name {entity_opts.name!r} differs from the package's {match['name']!r}"
        )
    if entity_opts is not None and entity_opts.online_ttl_seconds < 0:
        problems.append(f"{where}: (fstore.entity).online_ttl_seconds must be >= 0")
    keys, times = [], []
    for fd in desc.fields:
        opts = options.field(fd)
        is_key, is_time = bool(opts and opts.key), bool(opts and opts.event_time)
        if is_key and is_time:
            problems.append(f"{where}: field {fd.name!r} cannot be both key and event time")
        if is_key:
            keys.append(fd)
            kind = _kind(fd)
            if kind not in KEY_KINDS or _repeated(fd):
                problems.append(f"{where}: key field {fd.name!r} must be int64 or string, not {kind}")
        elif is_time:
            times.append(fd)
            if fd.message_type is None or fd.message_type.full_name != TIMESTAMP or _repeated(fd):
                problems.append(f"{where}: event-time field {fd.name!r} must be google.protobuf.Timestamp")
        elif _kind(fd) not in _SCALAR_KINDS.values():
            problems.append(
                f"{where}: field {fd.name!r} has unsupported type {_kind(fd)} "
                "(features are scalars or repeated scalars)"
            )
    if len(keys) != 1:
        named = ", ".join(repr(f.name) for f in keys)
        problems.append(f"{where}: needs exactly one key field, found {len(keys)}" + (f" ({named})" if keys else ""))
    if len(times) != 1:
        named = ", ".join(repr(f.name) for f in times)
        problems.append(
            f"{where}: needs exactly one event-time field, found {len(times)}" + (f" ({named})" if times else "")
        )
    return problems


def entity_spec(desc: Descriptor, options: OptionsReader) -> EntitySpec:
    problems = schema_violations(desc, options)
    if problems:
        raise SchemaError("\n".join(problems))
    match = ENTITY_PACKAGE.match(desc.file.package)
    assert match is not None
    entity_opts: Any = options.entity(desc)
    key = time = None
    features = []
    for fd in desc.fields:
        opts = options.field(fd)
        spec = FieldSpec(
            name=fd.name,
            number=fd.number,
            kind=_kind(fd),
            repeated=_repeated(fd),
            description=(opts.description if opts else "") or "",
            pii=bool(opts and opts.pii),
            has_presence=bool(fd.has_presence),
        )
        if opts and opts.key:
            key = spec
        elif opts and opts.event_time:
            time = spec
        else:
            features.append(spec)
    assert key is not None and time is not None
    return EntitySpec(
        name=match["name"],
        version=int(match["version"]),
        full_name=desc.full_name,
        proto_file=desc.file.name,
        key=key,
        event_time=time,
        features=tuple(features),
        ttl_seconds=int(entity_opts.online_ttl_seconds),
        owner=entity_opts.owner,
        description=entity_opts.description,
        fingerprint=fingerprint(desc),
        descriptor=desc,
    )


def _repeated(fd: FieldDescriptor) -> bool:
    return bool(fd.is_repeated)


def _kind(fd: FieldDescriptor) -> str:
    if fd.message_type is not None:
        name = fd.message_type.full_name
        return "timestamp" if name == TIMESTAMP else f"message {name}"
    if fd.enum_type is not None:
        return f"enum {fd.enum_type.full_name}"
    return _SCALAR_KINDS[fd.type]
