"""Producers in Go, TypeScript and Java: what their generated publishers publish equals the Python publisher's.

Each language's driver is given the Python messages' bytes, parses them with its own protobuf runtime and
prints what its generated helper makes of each: the data bytes and the attributes, or the refusal. Those
must be byte-identical to `UserV1Publisher.attributes()` / `SerializeToString()`, event times with 0, 3, 6
and 9 fractional digits included, and every language refuses what Python refuses. The Go and TypeScript
publishers also publish to the real Pub/Sub emulator, and the Python subscriber reads back what they sent.
A toolchain that is not installed skips its tests, with the reason (nothing is downloaded).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1  # type: ignore[attr-defined]
from google.protobuf.message import Message

from demo_features.entities.item.v1 import Item, ItemV1Publisher
from demo_features.entities.user.v1 import User, UserV1Publisher
from demo_features.publisher import EntityPublisher
from fstore.codegen import go, java, typescript
from fstore.codegen.generate import TOOLS_DIR, Result, build, stale
from fstore.codegen.python import publisher_class
from fstore.schema.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "demo_features"
GO_PROTOBUF_SOURCE = Path("/usr/share/gocode/src/google.golang.org/protobuf")  # Debian golang-google-protobuf-dev
DEBIAN_PROTOC = Path("/usr/bin/protoc")  # Debian protobuf-compiler: the protoc of /usr/share/java/protobuf.jar
DEBIAN_PROTOBUF_JAR = Path("/usr/share/java/protobuf.jar")  # Debian libprotobuf-java
GO_ENV = {"GOPROXY": "off", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}  # offline: Debian's protobuf runtime
DEC_1 = 1_796_119_200  # 2026-12-01T10:00:00Z

Outcome = tuple[bytes, dict[str, str]] | str  # (data, attributes), or the refusal's message
M = TypeVar("M", User, Item)


def _with_time(message: M, seconds: int | None, nanos: int) -> M:
    if seconds is not None:
        stamp = message.event_time
        stamp.seconds, stamp.nanos = seconds, nanos
        stamp.SetInParent()  # set even at the epoch (an empty Timestamp)
    return message


def _user(seconds: int | None, nanos: int = 0, **fields: Any) -> User:
    return _with_time(User(**fields), seconds, nanos)


def _item(seconds: int | None, nanos: int = 0, **fields: Any) -> Item:
    return _with_time(Item(**fields), seconds, nanos)


FULL_USER: dict[str, Any] = {
    "user_id": 42, "age": 31, "country": "JP", "is_premium": True, "lifetime_orders": 12, "avg_order_value": 37.5,
    "favorite_categories": ["books", "garden"], "embedding": [0.25, -1.5, 3.0e-8] + [0.0] * 13,
}  # fmt: skip
CASES: dict[str, Message] = {
    "whole-second": _user(DEC_1, **FULL_USER),
    "millis": _user(DEC_1, 250_000_000, user_id=-7),
    "millis-leading-zero": _item(DEC_1, 10_000_000, item_id="sku-1", price=19.99, tags=["a", "b"]),
    "micros": _item(DEC_1, 123_456_000, item_id="sku-2", stock=0, category="tools", rating=4.5),
    "nanos": _user(DEC_1, 123_456_789, **FULL_USER),
    "one-nano": _item(DEC_1, 1, item_id="sku-3"),
    "before-1970": _user(-1, 500_000_000, user_id=3),
    "epoch": _user(0, user_id=4),
    "only-event-time": _user(DEC_1),
    "earliest": _user(-62_135_596_800, user_id=5),
    "latest": _user(253_402_300_799, 999_999_999, user_id=6),
    # refused by every language
    "unset-user": _user(None, user_id=8, age=30),
    "unset-item": _item(None, item_id="sku-4"),
    "after-9999": _user(253_402_300_800, user_id=9),
    "nanos-overflow": _user(DEC_1, 1_000_000_000, user_id=10),
    "negative-nanos": _item(DEC_1, -1, item_id="sku-5"),
}
UNSET = {"unset-user": "user v1: event_time is not set", "unset-item": "item v1: event_time is not set"}
INVALID = ("after-9999", "nanos-overflow", "negative-nanos")


def _python_publisher(message: Message) -> EntityPublisher[Any]:
    # A real client that is never used: attributes() needs no connection, and no credentials are looked up.
    client = pubsub_v1.PublisherClient(credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    cls = UserV1Publisher if isinstance(message, User) else ItemV1Publisher
    return cls("unused", project="fstore-local", client=client)


def _python_outcome(message: Message) -> Outcome:
    try:
        return message.SerializeToString(), _python_publisher(message).attributes(message)
    except ValueError as exc:
        return str(exc)


def _entity(message: Message) -> str:
    return "user" if isinstance(message, User) else "item"


def _driver_input() -> str:
    """One line per case: name, entity, base64 of the Python message's bytes (tab-separated)."""
    return "".join(
        f"{name}\t{_entity(m)}\t{base64.b64encode(m.SerializeToString()).decode()}\n" for name, m in CASES.items()
    )


def _parse_driver_output(stdout: str) -> dict[str, Outcome]:
    """`name ok <base64 data> key=value...` or `name error <message>` per line, tab-separated."""
    outcomes: dict[str, Outcome] = {}
    for line in stdout.splitlines():
        name, status, *rest = line.split("\t")
        if status == "ok":
            attributes = dict(pair.split("=", 1) for pair in rest[1:])
            outcomes[name] = (base64.b64decode(rest[0]), attributes)
        else:
            outcomes[name] = "\t".join(rest)
    return outcomes


def _assert_same_as_python(outcomes: dict[str, Outcome]) -> None:
    assert set(outcomes) == set(CASES)
    for name, message in CASES.items():
        expected, got = _python_outcome(message), outcomes[name]
        if name in UNSET:
            assert expected == got == UNSET[name], name
        elif name in INVALID:
            assert isinstance(expected, str) and expected.startswith("Timestamp is not valid"), name
            assert isinstance(got, str) and got.startswith(f"{_entity(message)} v1: event time: "), (name, got)
        else:
            assert got == expected, name
    # The cases cover what they say: each number of fractional digits protobuf's JSON writes.
    times = {n: o[1]["fstore_event_time"] for n, o in outcomes.items() if not isinstance(o, str)}
    assert (
        times["whole-second"] == "2026-12-01T10:00:00Z" and times["millis-leading-zero"] == "2026-12-01T10:00:00.010Z"
    )
    assert times["micros"] == "2026-12-01T10:00:00.123456Z" and times["one-nano"] == "2026-12-01T10:00:00.000000001Z"
    assert times["earliest"] == "0001-01-01T00:00:00Z" and times["latest"] == "9999-12-31T23:59:59.999999999Z"


def _run(cmd: list[str], cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, input=stdin, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def generated() -> Result:
    return build(ROOT, PACKAGE, checking=True)


def _copy_outputs(result: Result, prefix: str, dest: Path, suffixes: tuple[str, ...] = ("",)) -> None:
    """The outputs under `prefix` (those ending in one of `suffixes`), as files under `dest`."""
    for rel, data in result.outputs.items():
        if rel.startswith(prefix) and rel.endswith(suffixes):
            (dest / rel.removeprefix(prefix)).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel.removeprefix(prefix)).write_bytes(data)


def _skip_unless_generated(result: Result, language: str) -> None:
    if language in result.skipped:
        pytest.skip(f"{language} generator skipped here: {result.skipped[language]}")


def test_publishers_are_codegen_outputs(generated: Result, registry: Registry, tmp_path: Path) -> None:
    """`fstore codegen` makes them (so `--check` names a stale or hand-edited one), and they are committed."""
    shared = {
        "go": f"{go.ROOT}/{go.PUBLISH_PACKAGE}/publish.go",
        "typescript": f"{typescript.ROOT}/src/{typescript.PUBLISH_MODULE}.ts",
        "java": f"{java.SOURCES}/{java.ROUTING_ATTRIBUTES}",
    }
    per_version = {
        "go": lambda s: f"{go.ROOT}/{go.publisher_file(s)}",
        "typescript": lambda s: f"{typescript.ROOT}/src/{typescript.publisher_file(s)}",
        "java": lambda s: f"{java.SOURCES}/{java.java_package(s).replace('.', '/')}/{publisher_class(s)}.java",
    }
    checked = [language for language in shared if language not in generated.skipped]
    if not checked:
        pytest.skip(f"no Go, TypeScript or Java generator here: {generated.skipped}")
    paths = [shared[language] for language in checked]
    for language in checked:
        for spec in registry:
            path = per_version[language](spec)
            assert f'"{spec.fingerprint}"' in generated.outputs[path].decode(), path
            paths.append(path)
    for path in paths:
        assert (ROOT / path).read_bytes() == generated.outputs[path], f"{path} is stale: run `fstore codegen`"
    # A hand edit is drift that `--check` reports.
    shutil.copytree(ROOT / "clients", tmp_path / "clients", ignore=shutil.ignore_patterns("node_modules"))
    for path in paths:
        (tmp_path / path).write_bytes((tmp_path / path).read_bytes() + b"// hand-edited\n")
    assert set(paths) <= set(stale(tmp_path, generated))


# --- Go --------------------------------------------------------------------------------------------------

GO_ATTRIBUTES = """package main

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"os"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	itemv1 "github.com/fstore-dev/fstore/clients/go/fstore/entities/item/v1"
	userv1 "github.com/fstore-dev/fstore/clients/go/fstore/entities/user/v1"
)

func encode(entity string, raw []byte) ([]byte, map[string]string, error) {
	if entity == "user" {
		m := &userv1.User{}
		if err := proto.Unmarshal(raw, m); err != nil {
			panic(err)
		}
		return userv1.Encode(m)
	}
	m := &itemv1.Item{}
	if err := proto.Unmarshal(raw, m); err != nil {
		panic(err)
	}
	return itemv1.Encode(m)
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Split(in.Text(), "\\t")
		raw, err := base64.StdEncoding.DecodeString(f[2])
		if err != nil {
			panic(err)
		}
		data, attrs, err := encode(f[1], raw)
		if err != nil {
			fmt.Printf("%s\\terror\\t%s\\n", f[0], err)
			continue
		}
		out := []string{f[0], "ok", base64.StdEncoding.EncodeToString(data)}
		for k, v := range attrs {
			out = append(out, k+"="+v)
		}
		sort.Strings(out[3:])
		fmt.Println(strings.Join(out, "\\t"))
	}
}
"""

GO_PUBLISH = """package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	userv1 "github.com/fstore-dev/fstore/clients/go/fstore/entities/user/v1"
	"github.com/fstore-dev/fstore/clients/go/fstore/publish"
)

func main() {
	topic, missing := os.Args[1], os.Args[2]
	ctx := context.Background()
	client := publish.NewClient(nil) // PUBSUB_EMULATOR_HOST: no credentials
	users := []*userv1.User{
		{UserId: 7, EventTime: timestamppb.New(time.Date(2026, 12, 1, 10, 0, 0, 123456000, time.UTC)),
			Age: proto.Int32(41), Country: proto.String("FR"), FavoriteCategories: []string{"books", "garden"},
			Embedding: []float32{0.25, -1.5}},
		{UserId: 8, EventTime: timestamppb.New(time.Date(2026, 12, 1, 10, 0, 1, 0, time.UTC))},
	}
	ids, err := userv1.Publish(ctx, client, topic, users...)
	fmt.Println(strings.Join(ids, ","), err)
	_, err = userv1.Publish(ctx, client, topic, users[0], &userv1.User{UserId: 9})
	fmt.Println(err)
	_, err = userv1.Publish(ctx, client, missing, users[0])
	fmt.Println(err)
}
"""


@pytest.fixture(scope="module")
def go_binaries(generated: Result, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated module with both drivers, built once against Debian's protobuf runtime (no module proxy)."""
    _skip_unless_generated(generated, "go")
    if shutil.which("go") is None:
        pytest.skip("go not installed (apt-get install golang-go)")
    if not GO_PROTOBUF_SOURCE.is_dir():
        pytest.skip(f"{GO_PROTOBUF_SOURCE} missing (apt-get install golang-google-protobuf-dev); no module proxy here")
    module = tmp_path_factory.mktemp("go")
    _copy_outputs(generated, "clients/go/", module)
    with (module / "go.mod").open("a") as f:
        f.write(f"\nreplace google.golang.org/protobuf => {GO_PROTOBUF_SOURCE}\n")
    for name, code in (("attributes", GO_ATTRIBUTES), ("publish", GO_PUBLISH)):
        (module / "cmd" / name).mkdir(parents=True)
        (module / "cmd" / name / "main.go").write_text(code)
    _run(["go", "vet", "./..."], module, env=GO_ENV)
    _run(["go", "build", "-o", "bin/", "./cmd/..."], module, env=GO_ENV)
    return module / "bin"


def test_go_publisher_is_gofmt_clean(generated: Result) -> None:
    _skip_unless_generated(generated, "go")
    if shutil.which("gofmt") is None:
        pytest.skip("gofmt not installed (apt-get install golang-go)")
    files = [ROOT / p for p in generated.outputs if p.endswith("_publisher.go") or p.endswith("/publish.go")]
    assert files
    assert _run(["gofmt", "-l", *map(str, files)], ROOT) == ""


def test_go_attributes_and_bytes_equal_pythons(go_binaries: Path) -> None:
    _assert_same_as_python(_parse_driver_output(_run([str(go_binaries / "attributes")], go_binaries, _driver_input())))


# --- Publishing to the emulator (Go, TypeScript) ---------------------------------------------------------

PROJECT = "fstore-local"
EMULATOR_USERS = [  # what both languages' publish drivers build natively
    _user(DEC_1, 123_456_000, user_id=7, age=41, country="FR", favorite_categories=["books", "garden"],
          embedding=[0.25, -1.5]),
    _user(DEC_1 + 1, user_id=8),
]  # fmt: skip


@pytest.fixture
def topic(pubsub_env: str) -> Iterator[tuple[str, str]]:
    """A fresh topic (full name) and a subscription on it."""
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    name = uuid.uuid4().hex[:8]
    topic_path, sub_path = (
        publisher.topic_path(PROJECT, f"t-{name}"),
        subscriber.subscription_path(PROJECT, f"s-{name}"),
    )
    publisher.create_topic(name=topic_path)
    subscriber.create_subscription(name=sub_path, topic=topic_path)
    yield topic_path, sub_path
    subscriber.delete_subscription(subscription=sub_path)
    publisher.delete_topic(topic=topic_path)


def _pull(subscription: str, count: int) -> dict[str, Any]:
    """Message id -> Pub/Sub message, once `count` have arrived (then nothing more may come)."""
    subscriber = pubsub_v1.SubscriberClient()
    received: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while len(received) < count and time.monotonic() < deadline:
        for r in subscriber.pull(subscription=subscription, max_messages=10, timeout=10).received_messages:
            received[r.message.message_id] = r.message
            subscriber.acknowledge(subscription=subscription, ack_ids=[r.ack_id])
    more = subscriber.pull(subscription=subscription, max_messages=10, timeout=5)
    assert not more.received_messages, "a refused batch was published in part"
    return received


def _assert_pulled_python_equivalents(ids: list[str], subscription: str) -> None:
    received = _pull(subscription, len(EMULATOR_USERS))
    assert sorted(received) == sorted(ids)
    for message_id, user in zip(ids, EMULATOR_USERS, strict=True):
        assert received[message_id].data == user.SerializeToString()
        assert dict(received[message_id].attributes) == _python_publisher(user).attributes(user)
    assert received[ids[0]].attributes["fstore_event_time"] == "2026-12-01T10:00:00.123456Z"


@pytest.mark.emulator
def test_go_publishes_to_the_emulator(go_binaries: Path, topic: tuple[str, str]) -> None:
    topic_path, subscription = topic
    missing = f"projects/{PROJECT}/topics/missing-{uuid.uuid4().hex[:8]}"
    first, refused, not_found = _run([str(go_binaries / "publish"), topic_path, missing], go_binaries).splitlines()
    ids, err = first.split(" ", 1)
    assert err == "<nil>"
    _assert_pulled_python_equivalents(ids.split(","), subscription)
    assert refused == "message 1: user v1: event_time is not set"  # and nothing of that batch was sent
    assert not_found.startswith(f"publish to {missing}: 404 Not Found") and "NOT_FOUND" in not_found


# --- TypeScript ------------------------------------------------------------------------------------------

TS_ATTRIBUTES = """import { fromBinary } from "@bufbuild/protobuf";
import { base64Decode, base64Encode } from "@bufbuild/protobuf/wire";
import { ItemSchema } from "./fstore/entities/item/v1/item_pb";
import * as item from "./fstore/entities/item/v1/item_publisher";
import { UserSchema } from "./fstore/entities/user/v1/user_pb";
import * as user from "./fstore/entities/user/v1/user_publisher";

const cases: string[][] = CASES;
for (const [name, entity, data] of cases) {
  const raw = base64Decode(data);
  try {
    const m = entity === "user" ? user.encode(fromBinary(UserSchema, raw)) : item.encode(fromBinary(ItemSchema, raw));
    const attributes = Object.entries(m.attributes).map(([k, v]) => `${k}=${v}`);
    console.log([name, "ok", base64Encode(m.data), ...attributes].join("\\t"));
  } catch (error) {
    console.log([name, "error", error instanceof Error ? error.message : String(error)].join("\\t"));
  }
}
"""

TS_PUBLISH = """import { create } from "@bufbuild/protobuf";
import { TimestampSchema } from "@bufbuild/protobuf/wkt";
import { type User, UserSchema } from "./fstore/entities/user/v1/user_pb";
import { publish } from "./fstore/entities/user/v1/user_publisher";

const attempt = (topic: string, batch: User[]): Promise<string> =>
  publish(topic, batch).then((ids) => ids.join(","), (error: Error) => error.message);

async function main(): Promise<void> {
  const [topic, missing] = (globalThis as unknown as { process: { argv: string[] } }).process.argv.slice(2);
  const users = [
    create(UserSchema, {
      userId: 7n, eventTime: create(TimestampSchema, { seconds: 1796119200n, nanos: 123456000 }), age: 41,
      country: "FR", favoriteCategories: ["books", "garden"], embedding: [0.25, -1.5],
    }),
    create(UserSchema, { userId: 8n, eventTime: create(TimestampSchema, { seconds: 1796119201n }) }),
  ];
  console.log(await attempt(topic, users));
  console.log(await attempt(topic, [users[0], create(UserSchema, { userId: 9n })]));
  console.log(await attempt(missing, [users[0]]));
}
void main();
"""


@pytest.fixture(scope="module")
def typescript_out(generated: Result, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated package with both drivers: type-checked with its own tsconfig, then emitted for node."""
    _skip_unless_generated(generated, "typescript")
    modules = ROOT / TOOLS_DIR / "node_modules"
    if not (modules / ".bin/tsc").exists() or not (modules / "@bufbuild/protobuf").is_dir():
        pytest.skip(f"typescript/@bufbuild/protobuf not in {TOOLS_DIR} (run `fstore codegen` once with npm)")
    package = tmp_path_factory.mktemp("ts")
    _copy_outputs(generated, "clients/typescript/", package)
    (package / "node_modules").symlink_to(modules)
    cases = [[name, _entity(m), base64.b64encode(m.SerializeToString()).decode()] for name, m in CASES.items()]
    (package / "src/attributes.ts").write_text(TS_ATTRIBUTES.replace("CASES", json.dumps(cases)))
    (package / "src/publish_users.ts").write_text(TS_PUBLISH)
    tsc = str(modules / ".bin/tsc")
    _run([tsc, "-p", "."], package)  # strict, bundler resolution: how a consumer compiles the package
    # Emit CommonJS (the package.json says ESM with bundler resolution) just to run it under plain node.
    (package / "package.json").unlink()
    _run([tsc, "-p", ".", "--noEmit", "false", "--outDir", "out", "--module", "node16", "--moduleResolution", "node16"],
         package)  # fmt: skip
    return package / "out"


def test_typescript_attributes_and_bytes_equal_pythons(typescript_out: Path) -> None:
    _assert_same_as_python(_parse_driver_output(_run(["node", "attributes.js"], typescript_out)))


@pytest.mark.emulator
def test_typescript_publishes_to_the_emulator(typescript_out: Path, topic: tuple[str, str]) -> None:
    topic_path, subscription = topic
    missing = f"projects/{PROJECT}/topics/missing-{uuid.uuid4().hex[:8]}"
    ids, refused, not_found = _run(["node", "publish_users.js", topic_path, missing], typescript_out).splitlines()
    _assert_pulled_python_equivalents(ids.split(","), subscription)
    assert refused == "user v1: event_time is not set"
    assert not_found.startswith(f"publish to {missing}: 404") and "NOT_FOUND" in not_found


# --- Java ------------------------------------------------------------------------------------------------

JAVA_ATTRIBUTES = """
import dev.fstore.entities.item.v1.Item;
import dev.fstore.entities.item.v1.ItemV1Publisher;
import dev.fstore.entities.user.v1.User;
import dev.fstore.entities.user.v1.UserV1Publisher;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.Base64;
import java.util.Map;

public class Attributes {
  public static void main(String[] args) throws Exception {
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    for (String line; (line = in.readLine()) != null; ) {
      String[] f = line.split("\\t", -1);
      byte[] raw = Base64.getDecoder().decode(f[2]);
      StringBuilder out = new StringBuilder(f[0]);
      try {
        Map<String, String> attributes;
        byte[] data;
        if (f[1].equals("user")) {
          User m = User.parseFrom(raw);
          attributes = UserV1Publisher.attributes(m);
          data = m.toByteArray();
        } else {
          Item m = Item.parseFrom(raw);
          attributes = ItemV1Publisher.attributes(m);
          data = m.toByteArray();
        }
        out.append("\\tok\\t").append(Base64.getEncoder().encodeToString(data));
        attributes.forEach((k, v) -> out.append('\\t').append(k).append('=').append(v));
      } catch (IllegalArgumentException e) {
        out.append("\\terror\\t").append(e.getMessage());
      }
      System.out.println(out);
    }
  }
}
"""


def _java_runtime(generated: Result, sources: Path) -> Path:
    """A protobuf-java jar and the messages to compile against it: the committed ones when the jar of the
    pom's version is in ~/.m2 (Maven Central is not reachable here), else ones made by Debian's protoc for
    Debian's libprotobuf-java. The generated publishers only read the message's event time, so they are
    the same code on either."""
    version = re.search(
        r"<protobuf.version>(.+?)</protobuf.version>", generated.outputs["clients/java/pom.xml"].decode()
    )
    assert version is not None
    jar = Path.home() / f".m2/repository/com/google/protobuf/protobuf-java/{version[1]}/protobuf-java-{version[1]}.jar"
    if jar.is_file():
        _copy_outputs(generated, f"{java.SOURCES}/", sources)
        return jar
    debian_jar = DEBIAN_PROTOBUF_JAR.resolve()
    debian_version = re.fullmatch(r"protobuf-(\d+\.\d+\.\d+)\.jar", debian_jar.name)
    if not DEBIAN_PROTOC.exists() or debian_version is None:
        pytest.skip(
            f"protobuf-java {version[1]} is not in ~/.m2 (Maven Central is not reachable here), and Debian's protoc "
            "and protobuf-java are not installed (apt-get install protobuf-compiler libprotobuf-java)"
        )
    protoc_version = _run([str(DEBIAN_PROTOC), "--version"], ROOT).split()[-1]
    if protoc_version != debian_version[1]:
        pytest.skip(f"{DEBIAN_PROTOC} is protoc {protoc_version}, not the {debian_version[1]} of {debian_jar}")
    from fstore.codegen.protoc import schema_files, well_known_include
    from fstore.schema import proto_include

    includes = [f"-I{ROOT / 'schemas'}", f"-I{proto_include()}", f"-I{well_known_include()}"]
    sources.mkdir(parents=True)
    _run([str(DEBIAN_PROTOC), *includes, f"--java_out={sources}", *schema_files(ROOT / "schemas")], ROOT)
    _copy_outputs(generated, f"{java.SOURCES}/", sources, ("Publisher.java", java.ROUTING_ATTRIBUTES))
    return debian_jar


def test_java_attributes_and_bytes_equal_pythons(generated: Result, tmp_path: Path) -> None:
    _skip_unless_generated(generated, "java")
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("javac/java not installed (a JDK 11+)")
    sources, classes = tmp_path / "src", tmp_path / "classes"
    jar = _java_runtime(generated, sources)
    (sources / "Attributes.java").write_text(JAVA_ATTRIBUTES)
    files = [str(p) for p in sources.rglob("*.java")]
    _run(["javac", "--release", "11", "-d", str(classes), "-cp", str(jar), *files], tmp_path)
    output = _run(["java", "-cp", f"{classes}{os.pathsep}{jar}", "Attributes"], tmp_path, _driver_input())
    _assert_same_as_python(_parse_driver_output(output))


def test_python_publisher_refuses_what_the_others_refuse() -> None:
    """The reference itself: Python's `attributes()` refuses every case the others must refuse."""
    for name in (*UNSET, *INVALID):
        assert isinstance(_python_outcome(CASES[name]), str), name
    epoch = _python_outcome(CASES["epoch"])
    assert not isinstance(epoch, str) and epoch[1]["fstore_event_time"] == "1970-01-01T00:00:00Z"
