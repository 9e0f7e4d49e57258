"""`shoal dev` as a user runs it: one process, then the CLI against the context it wrote."""

import os
import subprocess
from pathlib import Path

import httpx

from helpers import SHOAL, free_port, kill_group, wait_until


def test_shoal_dev_then_deploy_wait_reaches_running(tmp_path: Path) -> None:
    env = {**os.environ, "SHOAL_CONFIG": str(tmp_path / "config.yaml")}
    port = free_port()
    log = (tmp_path / "dev.log").open("wb")
    dev = subprocess.Popen(
        [
            SHOAL,
            "dev",
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            f"127.0.0.1:{port}",
            "--nodes",
            "2",
            "--backend",
            "sim",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: (
                (tmp_path / "config.yaml").exists()
                and httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
            ),
            what="shoal dev to serve and write its context",
        )
        printed = (tmp_path / "dev.log").read_text()
        assert f"http://127.0.0.1:{port}" in printed and "backend: sim" in printed
        assert oct((tmp_path / "data" / "admin.token").stat().st_mode & 0o777) == "0o600"
        wait_until(
            lambda: (
                "dev-2"
                in subprocess.run(
                    [SHOAL, "node", "list"], env=env, capture_output=True, text=True
                ).stdout
            ),
            what="both dev nodes",
        )
        deployed = subprocess.run(
            [SHOAL, "vm", "deploy", "first", "--image", "anything:1", "--wait"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert deployed.returncode == 0, deployed.stderr
        shown = subprocess.run(
            [SHOAL, "vm", "list"], env=env, capture_output=True, text=True
        ).stdout
        assert "first" in shown and "Running" in shown
        logs = subprocess.run([SHOAL, "logs", "first"], env=env, capture_output=True, text=True)
        assert logs.returncode == 1
        assert "the sim backend keeps no serial console log" in logs.stderr
    finally:
        kill_group(dev)


def test_shoal_dev_refuses_to_serve_plain_http_beyond_loopback(tmp_path: Path) -> None:
    result = subprocess.run(
        [SHOAL, "dev", "--data-dir", str(tmp_path), "--listen", "0.0.0.0:8420"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "loopback" in result.stderr
