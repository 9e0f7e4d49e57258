"""Spec building from flags: only what the user gave is sent (a VMConfig's values win)."""

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shoal.cli.common import CliError
from shoal.cli.main import app
from shoal.cli.vmspec import Arch, GuestOS, SpecFlags, build_metadata, build_spec
from shoal.client import Client, Context, Contexts

runner = CliRunner()


def test_no_flags_no_fields() -> None:
    assert build_spec(SpecFlags()) == {}


def test_every_flag(tmp_path: Path) -> None:
    script = tmp_path / "boot.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    spec = build_spec(
        SpecFlags(
            image="ubuntu:24.04",
            cpu=4,
            memory="4Gi",
            disk="20Gi",
            os=GuestOS.macos,
            arch=Arch.arm64,
            selector=["xcode=16", "chip=m2,pool=ci"],
            ports=["22", "5900:5900"],
            ephemeral=False,
            ttl="2h",
            priority=-3,
            startup_script=script,
        )
    )
    assert spec == {
        "image": "ubuntu:24.04",
        "cpu": 4,
        "memory": "4Gi",
        "disk": "20Gi",
        "os": "macos",
        "arch": "arm64",
        "nodeSelector": {"xcode": "16", "chip": "m2", "pool": "ci"},
        "ports": [{"guest": 22}, {"guest": 5900, "node": 5900}],
        "ephemeral": False,
        "ttlSeconds": 7200,
        "priority": -3,
        "startupScript": "#!/bin/sh\necho hi\n",
    }


def test_sizes_pass_through_unchecked() -> None:
    assert build_spec(SpecFlags(memory="lots")) == {"memory": "lots"}


def test_metadata() -> None:
    assert build_metadata("a", None, None) == {"name": "a"}
    assert build_metadata(None, "ci-", ["team=ios"]) == {
        "generateName": "ci-",
        "labels": {"team": "ios"},
    }
    with pytest.raises(CliError):
        build_metadata(None, None, None)
    with pytest.raises(CliError):
        build_metadata("a", "b-", None)


@pytest.fixture
def sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A context pointing nowhere, and Client.create recording what it would send."""
    monkeypatch.setenv("SHOAL_CONFIG", str(tmp_path / "config.yaml"))
    monkeypatch.delenv("SHOAL_CONTEXT", raising=False)
    Contexts("t", {"t": Context("http://127.0.0.1:9", "tok", "team-a")}).save()
    bodies: list[dict[str, Any]] = []

    def create(
        self: Client, plural: str, obj: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        bodies.append({"plural": plural, "namespace": namespace, "body": obj})
        meta = dict(obj["metadata"])
        meta.setdefault("name", str(meta.get("generateName", "")) + "abcde")
        return {**obj, "metadata": {**meta, "resourceVersion": "7"}}

    monkeypatch.setattr(Client, "create", create)
    return bodies


def test_deploy_sends_only_given_fields(sent: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["vm", "deploy", "b1", "--config", "mac-large", "--cpu", "8"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "b1\n"
    assert sent == [
        {
            "plural": "virtualmachines",
            "namespace": "team-a",
            "body": {
                "apiVersion": "shoal.dev/v1",
                "kind": "VirtualMachine",
                "metadata": {"name": "b1"},
                "spec": {"cpu": 8, "config": "mac-large"},
            },
        }
    ]


def test_deploy_generate_name_namespace_and_flags(sent: list[dict[str, Any]]) -> None:
    result = runner.invoke(
        app,
        [
            "vm", "deploy", "--generate-name", "ci-", "--image", "x", "-n", "other",
            "--ephemeral", "--ttl", "30m", "--label", "team=ios", "--selector", "xcode=16",
            "--port", "22", "--memory", "4Gi",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "ci-abcde\n"
    call = sent[0]
    assert call["namespace"] == "other"
    assert call["body"]["metadata"] == {"generateName": "ci-", "labels": {"team": "ios"}}
    assert call["body"]["spec"] == {
        "image": "x",
        "memory": "4Gi",
        "nodeSelector": {"xcode": "16"},
        "ports": [{"guest": 22}],
        "ephemeral": True,
        "ttlSeconds": 1800,
    }


def test_deploy_needs_image_or_config(sent: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["vm", "deploy", "b1"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --image is required")
    assert sent == []
    result = runner.invoke(app, ["vm", "deploy", "--image", "x"])
    assert result.exit_code == 1
    assert "NAME or --generate-name" in result.stderr


def test_vmconfig_file_and_flags(sent: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("metadata:\n  name: small\nspec:\n  image: ubuntu\n  cpu: 1\n")
    result = runner.invoke(app, ["vmconfig", "create", "-f", str(path), "--memory", "1Gi"])
    assert result.exit_code == 0, result.output
    body = sent[0]["body"]
    assert sent[0]["plural"] == "vmconfigs"
    assert body["kind"] == "VMConfig"
    assert body["metadata"] == {"name": "small"}
    assert body["spec"] == {"image": "ubuntu", "cpu": 1, "memory": "1Gi"}
