"""`shoal secret` against a real `shoal controller` process (TLS), and the encryption key across
controller restarts: the same data dir reads its Secrets again, another key stops the start."""

import base64
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from helpers import SHOAL, Cli, ControllerProcess, free_port, processes

PASSWORD = "guest-pass-4c1e"  # distinctive values, looked for in everything printed
TOKEN = "ci-token-b7d2"


def private_key_pem() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControllerProcess, Cli]]:
    base = tmp_path_factory.mktemp("cli-secrets")
    controller = ControllerProcess(base / "controller")
    controller.start()
    with processes(controller):
        cli = Cli({**os.environ, "SHOAL_CONFIG": str(base / "config.yaml"), "CI_TOKEN": TOKEN})
        cli.run(
            "context",
            "add",
            "it",
            "--server",
            controller.url,
            "--token-file",
            str(controller.data_dir / "admin.token"),
            "--ca-fingerprint",
            controller.fingerprint,
        )
        yield controller, cli


def run(cli: Cli, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [SHOAL, *args], env=cli.env, capture_output=True, text=True, input=stdin, timeout=60
    )
    assert result.returncode == 0, f"shoal {' '.join(args)}: {result.stderr}{result.stdout}"
    return result


def test_secret_commands_never_print_a_value_unless_told(
    cluster: tuple[ControllerProcess, Cli], tmp_path: Path
) -> None:
    controller, cli = cluster
    key = private_key_pem()
    key_file = tmp_path / "id_ed25519"
    key_file.write_bytes(key)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("vm ssh-ed25519 AAAA\n")
    printed: list[str] = []

    def shown(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
        printed.append(result.stdout + result.stderr)
        return result

    made = shown(run(cli, "secret", "create", "ssh", "login", "--user", "ci", "-i", str(key_file)))
    assert "secret login created (ssh-auth: ssh-privatekey, username)" in made.stdout
    shown(run(cli, "secret", "create", "ssh", "pw", "--password-stdin", stdin=PASSWORD + "\n"))
    shown(
        run(
            cli,
            "secret",
            "create",
            "generic",
            "ci",
            "--from-file",
            str(known_hosts),
            "--from-env",
            "token=CI_TOKEN",
            "--label",
            "team=ios",
        )
    )
    # no option takes a value on the command line
    refused = subprocess.run(
        [SHOAL, "secret", "create", "ssh", "x", "--password", PASSWORD],
        env=cli.env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "No such option" in refused.stderr
    missing = subprocess.run(
        [SHOAL, "secret", "create", "generic", "x", "--from-env", "NOT_SET_ANYWHERE"],
        env=cli.env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1
    assert "environment variable NOT_SET_ANYWHERE is not set" in missing.stderr

    table = shown(run(cli, "secret", "list")).stdout.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "KEYS", "AGE"]
    rows = {line.split()[0]: line.split()[1:3] for line in table[1:]}
    assert rows == {
        "ci": ["opaque", "known_hosts,token"],
        "login": ["ssh-auth", "ssh-privatekey,username"],
        "pw": ["ssh-auth", "password"],
    }
    listed = shown(run(cli, "secret", "list", "-o", "json"))
    items = {s["metadata"]["name"]: s["data"] for s in json.loads(listed.stdout)["items"]}
    assert items["ci"] == {"known_hosts": None, "token": None}
    assert "values hidden" in listed.stderr
    assert shown(run(cli, "secret", "list", "-l", "team=ios")).stdout.count("\n") == 2

    described = shown(run(cli, "secret", "get", "ci")).stdout
    assert "Type:      opaque" in described
    assert f"token:       {len(TOKEN)} bytes" in described
    as_yaml = shown(run(cli, "secret", "get", "login", "-o", "yaml"))
    assert yaml.safe_load(as_yaml.stdout)["data"] == {"ssh-privatekey": None, "username": None}

    for output in printed:
        for value in (PASSWORD, TOKEN, base64.b64encode(TOKEN.encode()).decode(), "PRIVATE KEY"):
            assert value not in output

    revealed = run(cli, "secret", "get", "ci", "--reveal").stdout
    assert f"token:       {TOKEN}" in revealed and "vm ssh-ed25519 AAAA" in revealed
    assert key.decode().splitlines()[1] in run(cli, "secret", "get", "login", "--reveal").stdout
    raw = json.loads(run(cli, "secret", "get", "pw", "--reveal", "-o", "json").stdout)
    assert base64.b64decode(raw["data"]["password"]).decode() == PASSWORD

    deleted = run(cli, "secret", "delete", "ci", "pw", "login")
    assert deleted.stdout.splitlines() == [
        "secret ci deleted",
        "secret pw deleted",
        "secret login deleted",
    ]
    assert "No resources found" in run(cli, "secret", "list").stderr
    assert controller.log_path is not None  # nor in what the controller logged
    logged = controller.log_path.read_text()
    assert PASSWORD not in logged and TOKEN not in logged and "PRIVATE KEY" not in logged


def test_help_on_every_secret_command(cluster: tuple[ControllerProcess, Cli]) -> None:
    _, cli = cluster
    for command in (
        [],
        ["create"],
        ["create", "ssh"],
        ["create", "generic"],
        ["list"],
        ["get"],
        ["delete"],
    ):
        result = run(cli, "secret", *command, "--help")
        assert "Usage: shoal secret" in result.stdout


def start_controller(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A controller that must fail to start: its exit and what it printed."""
    return subprocess.run(
        [
            SHOAL,
            "controller",
            "--data-dir",
            str(data_dir),
            "--listen",
            f"127.0.0.1:{free_port()}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_restart_reads_the_secrets_and_another_key_stops_the_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "controller"
    controller = ControllerProcess(data_dir)
    controller.start()
    with processes(controller):
        key_file = data_dir / "encryption.key"
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        value = base64.b64encode(PASSWORD.encode()).decode()
        controller.client().create(
            "secrets", {"metadata": {"name": "kept"}, "data": {"password": value}}, "default"
        )
        controller.kill()
        controller.start()  # the same data dir, the same key
        assert controller.client().get("secrets", "kept", "default")["data"] == {"password": value}
        controller.kill()

    other = tmp_path / "other.key"
    other.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    wrong = start_controller(data_dir, "--encryption-key-file", str(other))
    assert wrong.returncode == 1, wrong.stderr
    assert "error: Secret default/kept was sealed with encryption key " in wrong.stderr
    assert f"({other})" in wrong.stderr and "Traceback" not in wrong.stderr
    missing = start_controller(data_dir, "--encryption-key-file", str(tmp_path / "none.key"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    other.write_text("not a key\n")
    malformed = start_controller(data_dir, "--encryption-key-file", str(other))
    assert malformed.returncode == 1 and "not the base64 of 32 bytes" in malformed.stderr

    # the key given explicitly (as replicas on one PostgreSQL share it) opens them again
    shared = tmp_path / "shared.key"
    shared.write_bytes(key_file.read_bytes())
    again = ControllerProcess(data_dir, extra_args=["--encryption-key-file", str(shared)])
    again.start()
    with processes(again):
        assert again.client().get("secrets", "kept", "default")["data"] == {"password": value}
