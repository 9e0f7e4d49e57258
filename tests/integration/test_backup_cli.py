"""`shoal admin backup` while a real controller serves, and `shoal admin restore` into a new data
dir: the restored controller serves the same objects (a Secret's data too) and tokens, numbers
on past the backup's resourceVersion, and its agent and watches recover by themselves (410 Gone
for a version seen before, then a fresh list)."""

import base64
import contextlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers import SHOAL, AgentProcess, ControllerProcess, create_join_token, processes, wait_until
from shoal.client import Client
from shoal.errors import Gone, NotFound

PASSWORD = base64.b64encode(b"restored-secret-0b7e").decode()
SUMMARY = re.compile(r"backed up (\d+) objects, (\d+) tokens at resourceVersion (\d+) to (.+)")


def shoal(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run([SHOAL, *args], capture_output=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(
            f"shoal {' '.join(args)} exited {result.returncode}: {result.stderr!r}"
        )
    return result


def running(client: Client, name: str) -> bool:
    return client.get("virtualmachines", name, "team")["status"]["phase"] == "Running"


def watch_first(client: Client, resource_version: str) -> dict[str, Any]:
    return next(iter(client.watch("vmconfigs", "team", resource_version=resource_version)))


@pytest.mark.slow
def test_backup_while_serving_then_restore_into_a_new_data_dir(tmp_path: Path) -> None:
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    backup_file = tmp_path / "shoal.backup"
    old = ControllerProcess(old_dir)
    old.start()
    cleanup = contextlib.ExitStack()
    with cleanup, processes(old):
        client = old.client()
        agent = AgentProcess(
            old.url,
            create_join_token(client),
            "node",
            tmp_path / "agent",
            extra_args=["--heartbeat-interval", "1", "--sim-boot-delay", "0.1"],
        )
        agent.start()
        cleanup.callback(agent.kill)  # unless it gets to move over to the new controller
        client.create("namespaces", {"metadata": {"name": "team"}})
        config = client.create(
            "vmconfigs", {"metadata": {"name": "small"}, "spec": {"image": "sim:1"}}, "team"
        )
        secret = client.create(
            "secrets", {"metadata": {"name": "deploy"}, "data": {"password": PASSWORD}}, "team"
        )
        client.create(
            "virtualmachines",
            {"metadata": {"name": "before"}, "spec": {"image": "sim:1", "cpu": 1}},
            "team",
        )
        wait_until(lambda: running(client, "before"), what="a VM Running before the backup")

        # taken while the controller serves, and its agent heartbeats every second
        made = shoal("admin", "backup", "--data-dir", str(old_dir), str(backup_file))
        summary = SUMMARY.search(made.stdout.decode())
        assert summary is not None, made.stdout
        assert summary.group(4) == str(backup_file)
        backup_rv = int(summary.group(3))
        assert int(summary.group(2)) >= 2  # the admin's and the node's tokens
        assert backup_file.stat().st_mode & 0o077 == 0
        assert PASSWORD.encode() not in backup_file.read_bytes()
        streamed = shoal("admin", "backup", "--data-dir", str(old_dir), "-")
        assert streamed.stdout.startswith(b'{"format":"shoal-backup","version":1,')
        assert b"backed up" in streamed.stderr

        # written after the backup: versions the old controller handed out, lost with it
        late = client.create(
            "vmconfigs", {"metadata": {"name": "late"}, "spec": {"image": "sim:1"}}, "team"
        )
        assert int(late["metadata"]["resourceVersion"]) > backup_rv
        before = {
            kind: {o["metadata"]["name"]: o for o in client.list_all(kind, "team")}
            for kind in ("vmconfigs", "secrets", "virtualmachines")
        }
        old_admin = old.admin_token
        client.close()
        cleanup.pop_all()

    # the new data dir: the backup, the same encryption key and the same TLS CA (agents pin it)
    new_dir.mkdir()
    shutil.copy2(old_dir / "encryption.key", new_dir / "encryption.key")
    shutil.copytree(old_dir / "tls", new_dir / "tls")
    restored = shoal("admin", "restore", "--data-dir", str(new_dir), str(backup_file))
    assert f"from resourceVersion {backup_rv}" in restored.stdout.decode()

    new = ControllerProcess(new_dir, port=old.port)
    new.start()
    with processes(new, agent):
        client = new.client(old_admin)  # the old admin token authenticates: tokens came along
        assert {o["metadata"]["name"] for o in client.list_all("namespaces")} >= {"team"}
        got = client.get("vmconfigs", "small", "team")
        assert got == before["vmconfigs"]["small"]
        assert got["metadata"]["resourceVersion"] == config["metadata"]["resourceVersion"]
        with pytest.raises(NotFound):
            client.get("vmconfigs", "late", "team")
        restored_secret = client.get("secrets", "deploy", "team")
        assert restored_secret["data"] == {"password": PASSWORD}
        assert restored_secret["metadata"]["uid"] == secret["metadata"]["uid"]

        # a watch from a version of before the backup, or of after it, is Gone; a list works
        for stale in (config["metadata"]["resourceVersion"], late["metadata"]["resourceVersion"]):
            with pytest.raises(Gone):
                watch_first(client, stale)
        listing = client.list("vmconfigs", "team")
        assert [o["metadata"]["name"] for o in listing["items"]] == ["small"]
        assert int(listing["metadata"]["resourceVersion"]) > backup_rv
        stream = client.watch(
            "vmconfigs", "team", resource_version=listing["metadata"]["resourceVersion"]
        )
        fresh = client.create(
            "vmconfigs", {"metadata": {"name": "fresh"}, "spec": {"image": "sim:1"}}, "team"
        )
        assert int(fresh["metadata"]["resourceVersion"]) > backup_rv
        event = next(iter(stream))
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "fresh")

        # the agent (same address, same CA, its token restored) relists and runs a new VM
        client.create(
            "virtualmachines",
            {"metadata": {"name": "after"}, "spec": {"image": "sim:1", "cpu": 1}},
            "team",
        )
        wait_until(lambda: running(client, "after"), what="a VM deployed after the restore to run")
        assert running(client, "before")
        client.close()

    # what restore refuses, with one line and exit code 1
    refused = shoal("admin", "restore", "--data-dir", str(new_dir), str(backup_file), check=False)
    assert refused.returncode == 1
    assert b"already holds objects or tokens" in refused.stderr and b"--force" in refused.stderr
    not_backup = tmp_path / "notes.txt"
    not_backup.write_text("hello\n")
    fresh_dir = tmp_path / "fresh"
    for args, message in [
        ([str(not_backup)], b"not a shoal backup"),
        ([str(tmp_path / "missing")], b"No such file"),
        (
            ["--encryption-key-file", str(tmp_path / "none.key"), str(backup_file)],
            b"does not exist",
        ),
        ([str(backup_file)], b"--encryption-key-file"),  # no key in the fresh data dir
    ]:
        result = shoal("admin", "restore", "--data-dir", str(fresh_dir), *args, check=False)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert result.stderr.startswith(b"error: ") and b"Traceback" not in result.stderr
    missing = shoal("admin", "backup", "--data-dir", str(tmp_path / "nowhere"), "-", check=False)
    assert missing.returncode == 1 and b"there is no database" in missing.stderr
