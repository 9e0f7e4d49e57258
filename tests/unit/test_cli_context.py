"""`shoal context` against a temporary contexts file."""

import json
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from shoal.cli.main import app
from shoal.client import Contexts

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "shoal" / "config.yaml"
    monkeypatch.setenv("SHOAL_CONFIG", str(path))
    monkeypatch.delenv("SHOAL_CONTEXT", raising=False)
    return path


def test_add_use_list_delete(config: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["context", "add", "dev", "--server", "http://127.0.0.1:8420/", "--token", "s3cret"]
    )
    assert result.exit_code == 0, result.output
    assert "switched to context dev" in result.stdout
    assert stat.S_IMODE(config.stat().st_mode) == 0o600

    token_file = tmp_path / "token"
    token_file.write_text("other-secret\n")
    result = runner.invoke(
        app,
        [
            "context", "add", "prod", "--server", "http://10.0.0.1:8420",
            "--token-file", str(token_file), "-n", "team-a", "--no-use",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    contexts = Contexts.load()
    assert contexts.current == "dev"
    assert contexts.contexts["dev"].server == "http://127.0.0.1:8420"
    assert contexts.contexts["prod"].token == "other-secret"
    assert contexts.contexts["prod"].namespace == "team-a"
    assert contexts.contexts["prod"].caCert is None

    result = runner.invoke(app, ["context", "list"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["CURRENT", "NAME", "SERVER", "NAMESPACE", "CA"]
    assert lines[1].split() == ["*", "dev", "http://127.0.0.1:8420", "default", "none"]
    assert lines[2].split() == ["prod", "http://10.0.0.1:8420", "team-a", "none"]
    assert "secret" not in result.output

    result = runner.invoke(app, ["context", "use", "prod"])
    assert result.exit_code == 0
    assert Contexts.load().current == "prod"
    result = runner.invoke(app, ["context", "current"])
    assert result.stdout == "prod\n"

    for fmt, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        result = runner.invoke(app, ["context", "list", "-o", fmt])
        assert result.exit_code == 0
        assert "secret" not in result.output
        data = load(result.stdout)
        assert data["current"] == "prod"
        assert [c["name"] for c in data["items"]] == ["dev", "prod"]

    result = runner.invoke(app, ["context", "delete", "prod"])
    assert result.exit_code == 0
    assert Contexts.load().current is None
    assert list(Contexts.load().contexts) == ["dev"]


def test_errors(config: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["vm", "list"])
    assert result.exit_code == 1
    assert result.stderr == "error: no context: run `shoal context add` or `shoal dev`\n"

    result = runner.invoke(app, ["context", "use", "nope"])
    assert result.exit_code == 1
    assert "context 'nope' not found" in result.stderr

    result = runner.invoke(app, ["context", "add", "x", "--server", "http://h:1"])
    assert result.exit_code == 1
    assert "--token" in result.stderr

    result = runner.invoke(
        app, ["context", "add", "x", "--server", "http://h:1", "--token-file", str(tmp_path / "no")]
    )
    assert result.exit_code == 1
    assert "--token-file" in result.stderr

    result = runner.invoke(
        app,
        ["context", "add", "x", "--server", "http://h:1", "--token", "t", "--ca-fingerprint", "ab"],
    )
    assert result.exit_code == 1
    assert "only applies to https" in result.stderr

    result = runner.invoke(app, ["context", "add", "x", "--server", "ftp://h", "--token", "t"])
    assert result.exit_code == 1
    assert "https:// or http://" in result.stderr

    # https without a fingerprint must be verifiable; a closed port cannot be checked at all
    result = runner.invoke(
        app, ["context", "add", "x", "--server", "https://127.0.0.1:9", "--token", "t"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach https://127.0.0.1:9")
    assert not config.exists()

    result = runner.invoke(app, ["vm", "list", "--context", "missing"])
    assert result.exit_code == 1
    assert "context 'missing' not found" in result.stderr


def test_unreachable_server_is_one_line(config: Path) -> None:
    runner.invoke(app, ["context", "add", "dead", "--server", "http://127.0.0.1:9", "--token", "t"])
    result = runner.invoke(app, ["vm", "list"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach http://127.0.0.1:9")
    assert "Traceback" not in result.output
