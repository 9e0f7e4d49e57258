"""`shoal warmpool` as a user runs it against a real `shoal controller` (TLS), with no nodes: its
entries are made but stay Pending. Create from flags and from a file, list (table, wide, JSON),
get (with the entries), scale, delete, bad input as CLI errors."""

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from helpers import Cli, ControllerProcess, processes, wait_until
from runnerpool_helpers import private_key_pem


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    base = tmp_path_factory.mktemp("cli-warmpool")
    controller = ControllerProcess(base / "controller")
    controller.start()
    with processes(controller):
        cli = Cli({**os.environ, "SHOAL_CONFIG": str(base / "config.yaml")})
        cli.run(
            "context", "add", "it", "--server", controller.url,
            "--token-file", str(controller.data_dir / "admin.token"),
            "--ca-fingerprint", controller.fingerprint,
        )  # fmt: skip
        key = base / "guest-key"
        key.write_bytes(private_key_pem())
        cli.run("secret", "create", "ssh", "guest-key", "--user", "root", "--private-key", str(key))
        for config in ("builder", "tester"):
            cli.run(
                "vmconfig", "create", config, "--image", "example.com/runner:1",
                "--cpu", "2", "--memory", "2Gi", "--access-secret", "guest-key",
            )  # fmt: skip
        cli.run("vmconfig", "create", "no-access", "--image", "example.com/runner:1")
        yield cli


def test_warmpool_commands(cli: Cli, tmp_path: Path) -> None:
    created = cli.run(
        "warmpool", "create", "warm", "--config", "builder", "--size", "2",
        "--node-selector", "disk=ssd", "--max-idle", "10m", "--max-age", "2h",
    )  # fmt: skip
    assert "warmpool warm created" in created.stdout
    # From a file (just a spec), a flag overriding it, -o json printing what was made.
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump({"config": "tester", "size": 3, "mode": "clone"}))
    from_file = json.loads(
        cli.run("warmpool", "create", "golden", "-f", str(path), "--size", "1", "-o", "json").stdout
    )
    assert from_file["spec"]["mode"] == "clone" and from_file["spec"]["size"] == 1

    items = {p["metadata"]["name"]: p for p in cli.json("warmpool", "list")["items"]}
    assert sorted(items) == ["golden", "warm"]
    spec = items["warm"]["spec"]
    assert (spec["config"], spec["mode"], spec["size"]) == ("builder", "suspended", 2)
    assert spec["nodeSelector"] == {"disk": "ssd"}
    assert (spec["maxIdleSeconds"], spec["maxAgeSeconds"]) == (600, 7200)

    table = cli.run("warmpool", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "CONFIG", "MODE", "READY", "REFILLING", "CLAIMING", "AGE"]
    assert table[2].split()[:4] == ["warm", "builder", "suspended", "0/2"]
    wide = cli.run("warmpool", "list", "-o", "wide").stdout
    assert "LAST-DISCARD" in wide and "disk=ssd" in wide and "600s" in wide and "7200s" in wide
    assert "NAMESPACE" in cli.run("warmpool", "list", "-A").stdout

    # No nodes: the controller makes the entries, and they wait unscheduled.
    def entries_shown() -> bool:
        shown: str = cli.run("warmpool", "get", "warm").stdout
        return shown.count("<none>   Pending") == 2

    wait_until(entries_shown, timeout=30, what="the pool's two entries")
    shown = cli.run("warmpool", "get", "warm").stdout
    for line in ("Config:", "builder", "Ready:", "0/2", "Refilling:", "Conditions:", "Entries:"):
        assert line in shown
    assert "warm-w" in shown
    assert cli.json("warmpool", "get", "warm")["metadata"]["name"] == "warm"

    scaled = cli.run("warmpool", "scale", "warm", "--size", "1")
    assert "warmpool warm scaled: size 1" in scaled.stdout
    assert cli.json("warmpool", "get", "warm")["spec"]["size"] == 1

    # Bad input: clear errors, nothing made.
    bad = {
        "missing": ["create", "x", "--config", "nope"],
        "no_access": ["create", "x", "--config", "no-access"],
        "taken": ["create", "x", "--config", "builder"],
        "create_negative": ["create", "x", "--config", "tester", "--size", "-1"],
        "scale_negative": ["scale", "warm", "--size", "-1"],
        "no_config": ["create", "x"],
        "bad_duration": ["create", "x", "--config", "tester", "--max-idle", "soon"],
        "absent": ["scale", "nope", "--size", "1"],
    }
    ran = {key: cli.run("warmpool", *args, check=False) for key, args in bad.items()}
    errors = {key: (result.returncode, result.stderr) for key, result in ran.items()}
    code, text = errors["missing"]
    assert code == 1 and "spec.config" in text and "'nope' not found" in text, text
    assert "Traceback" not in text
    code, text = errors["no_access"]
    assert code == 1 and "spec.config" in text and "access.secretRef" in text, text
    code, text = errors["taken"]
    assert code == 1 and "already has WarmPool 'warm'" in text, text
    for key in ("create_negative", "scale_negative"):
        code, text = errors[key]
        assert code == 2 and "'--size'" in text and "greater than or equal to 0" in text, text
    code, text = errors["no_config"]
    assert code == 1 and "--config is required" in text, text
    code, text = errors["bad_duration"]
    assert code == 1 and "'soon' is not a duration" in text, text
    code, text = errors["absent"]
    assert code == 1 and "nope" in text, text
    names = [p["metadata"]["name"] for p in cli.json("warmpool", "list")["items"]]
    assert sorted(names) == ["golden", "warm"]

    for command in ([], ["create"], ["list"], ["get"], ["scale"], ["delete"]):
        assert "Usage: shoal warmpool" in cli.run("warmpool", *command, "--help").stdout

    # --wait: an empty pool is full as soon as the controller has seen it; a pool with no node
    # to make its entry on times out, saying how far it got.
    cli.run("vmconfig", "create", "empty", "--image", "example.com/runner:1",
            "--access-secret", "guest-key")  # fmt: skip
    empty = cli.run("warmpool", "create", "empty", "--config", "empty", "--size", "0", "--wait")
    assert "warmpool empty: 0/0 ready" in empty.stdout
    cli.run("warmpool", "delete", "golden")
    timed_out = cli.run(
        "warmpool", "create", "slow", "--config", "tester", "--wait", "--timeout", "1",
        check=False,
    )  # fmt: skip
    assert timed_out.returncode == 1, timed_out.stderr
    assert "timed out after 1s waiting for warmpool slow to fill: 0/1 ready" in timed_out.stderr

    deleted = cli.run("warmpool", "delete", "warm", "empty", "slow", "--wait", "--timeout", "30")
    for name in ("warm", "empty", "slow"):
        assert f"warmpool {name} is gone" in deleted.stdout
    assert cli.json("warmpool", "list")["items"] == []
    assert cli.json("vm", "list")["items"] == []  # the entries went first
    gone = cli.run("warmpool", "delete", "warm", check=False)
    assert gone.returncode == 1 and "warm" in gone.stderr
