"""`fstore schema check` against a real git repository: buf lint, buf breaking (FILE rules) and fstore's rules."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fstore.cli import app

ROOT = Path(__file__).resolve().parents[2]
USER_PROTO = "schemas/fstore/entities/user/v1/user.proto"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository holding a copy of schemas/, committed on `main`."""
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    _git(tmp_path, "init", "-q", "-b", "main")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty", "-m", "x")
    _git(tmp_path, "add", "schemas")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "main")
    return tmp_path


def _edit(repo: Path, old: str, new: str) -> None:
    path = repo / USER_PROTO
    text = path.read_text()
    assert old in text, f"test setup: {old!r} not in {USER_PROTO}"
    path.write_text(text.replace(old, new, 1))


def _check(repo: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["schema", "check", "--root", str(repo), *args])
    return result.exit_code, result.output


def test_unchanged_schemas_pass(repo: Path) -> None:
    code, output = _check(repo)
    assert code == 0, output
    assert "schema check passed" in output


def test_adding_an_optional_field_passes(repo: Path) -> None:
    _edit(
        repo,
        "  repeated float embedding = 9",
        "  // Probability of churn in the next 30 days.\n"
        '  optional double churn_score = 10 [(fstore.field) = {description: "Churn probability."}];\n'
        "  repeated float embedding = 9",
    )
    code, output = _check(repo)
    assert code == 0, output


def test_changed_field_type_fails_naming_the_field(repo: Path) -> None:
    _edit(repo, "optional int64 lifetime_orders = 6", "optional string lifetime_orders = 6")
    code, output = _check(repo)
    assert code == 1, output
    assert "lifetime_orders" in output and "user.proto" in output
    assert 'changed type from "int64" to "string"' in output


def test_removed_field_without_reserved_fails_naming_the_field(repo: Path) -> None:
    _edit(
        repo,
        '  optional string country = 4 [(fstore.field) = {description: "ISO 3166-1 alpha-2 country of the shipping '
        'address."}];\n',
        "",
    )
    code, output = _check(repo)
    assert code == 1, output
    assert '"country"' in output and "deleted" in output and "user.proto" in output


def test_second_key_field_fails_naming_both(repo: Path) -> None:
    _edit(repo, '[(fstore.field) = {description: "ISO', '[(fstore.field) = {key: true description: "ISO')
    code, output = _check(repo)
    assert code == 1, output
    assert "needs exactly one key field, found 2 ('user_id', 'country')" in output
    assert "schemas/fstore/entities/user/v1/user.proto" in output


def test_missing_event_time_fails(repo: Path) -> None:
    _edit(repo, "    event_time: true\n", "")
    code, output = _check(repo)
    assert code == 1, output
    assert "needs exactly one event-time field, found 0" in output
    assert "'event_time'" in output and "user.proto" in output


def test_lint_problem_names_file_and_field(repo: Path) -> None:
    _edit(repo, "optional bool is_premium = 5", "optional bool isPremium = 5")
    code, output = _check(repo, "--against", "main")
    assert code == 1, output
    assert "isPremium" in output and "(lint)" in output


def test_unknown_ref_or_no_repository_skips_breaking_with_a_note(repo: Path, tmp_path_factory) -> None:
    _edit(repo, "optional int64 lifetime_orders = 6", "optional string lifetime_orders = 6")
    code, output = _check(repo, "--against", "no-such-branch")
    assert code == 0, output  # the type change is only a breaking change; fstore's rules accept a string feature
    assert "git ref 'no-such-branch' does not exist" in output
    bare = tmp_path_factory.mktemp("no-git")
    shutil.copytree(ROOT / "schemas", bare / "schemas")
    code, output = _check(bare)
    assert code == 0, output
    assert "not in a git repository" in output


def test_against_a_remote_tracking_ref_in_a_clone(repo: Path, tmp_path_factory) -> None:
    """What the codegen workflow does: compare a PR checkout with origin/<base branch>."""
    clone = tmp_path_factory.mktemp("clone") / "repo"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, capture_output=True)
    _edit(clone, "optional int64 lifetime_orders = 6", "optional double lifetime_orders = 6")
    code, output = _check(clone, "--against", "origin/main")
    assert code == 1, output
    assert "lifetime_orders" in output


def test_codegen_refuses_a_breaking_edit_and_writes_nothing(repo: Path) -> None:
    """A double -> float change was once generated, and online reads then gave None for it."""
    _edit(repo, "optional double avg_order_value = 7", "optional float avg_order_value = 7")
    result = CliRunner().invoke(app, ["codegen", "--root", str(repo), "--only", "registry,python"])
    assert result.exit_code == 1, result.output
    assert "avg_order_value" in result.output and "nothing written" in result.output
    assert not (repo / "clients").exists()
    forced = CliRunner().invoke(app, ["codegen", "--root", str(repo), "--only", "registry", "--force"])
    assert forced.exit_code == 0 and (repo / "clients/registry/descriptor_set.binpb").is_file()
