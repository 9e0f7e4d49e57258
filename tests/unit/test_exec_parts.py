"""The pure parts of exec and startup scripts: frames, the shell command with its environment, exit
codes, the capped startup log, and the VM flags that set access and env."""

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.agent.execstream import ExecFailed, ExecRequest, exit_code
from shoal.agent.startup import DROPPED, CappedLog
from shoal.cli.common import CliError
from shoal.cli.vmspec import SpecFlags, build_spec
from shoal.tunnel import execframes as frames


def test_frames_carry_their_channel() -> None:
    assert frames.parse(frames.frame(frames.STDOUT, b"hi")) == (frames.STDOUT, b"hi")
    assert frames.parse(frames.frame(frames.STDIN)) == (frames.STDIN, b"")  # end of stdin
    assert frames.parse(frames.json_frame(frames.STATUS, {"exitCode": 7})) == (
        frames.STATUS,
        b'{"exitCode": 7}',
    )
    with pytest.raises(ValueError):
        frames.parse(b"")


@given(
    command=st.lists(
        st.text(min_size=0, max_size=20).filter(lambda t: "\x00" not in t), min_size=1, max_size=4
    ),
    value=st.text(max_size=40).filter(lambda t: "\x00" not in t),
)
def test_the_shell_command_gives_the_guest_exactly_the_arguments_and_env(
    command: list[str], value: str
) -> None:
    """Whatever the arguments and values hold (quotes, $, ;, newlines), a POSIX shell sees them
    as they were: nothing is expanded or run."""
    request = ExecRequest(["printf", "%s\\0", *command], env={"V": value})
    shown = subprocess.run(
        ["sh", "-c", request.shell_command() + '; printf "%s" "$V"'],
        capture_output=True,
        check=True,
    ).stdout
    *args, env_value = shown.split(b"\x00")
    assert [a.decode() for a in args] == [*command] and env_value.decode() == value


def test_an_exec_request_needs_a_command() -> None:
    for bad in ({}, {"command": []}, {"command": "ls"}, {"command": ["ls", 3]}):
        with pytest.raises(ExecFailed):
            ExecRequest.of(bad)
    wanted = ExecRequest.of({"command": ["ls"], "tty": True, "width": 120, "height": 40})
    assert (wanted.tty, wanted.stdin, wanted.width, wanted.height) == (True, False, 120, 40)


@pytest.mark.parametrize(
    ("status", "signal", "code"),
    [
        (0, None, 0),
        (7, None, 7),
        (-1, ("KILL", False, "", ""), 137),
        (-1, ("TERM", False, "", ""), 143),
        (-1, None, 255),
    ],
)
def test_exit_codes_as_shells_give_them(status: int, signal: object, code: int) -> None:
    completed = SimpleNamespace(exit_status=status, exit_signal=signal)
    assert exit_code(completed) == code  # type: ignore[arg-type]


def test_the_startup_log_keeps_its_last_bytes(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "x.log", cap=100)
    log.write(b"a" * 60)
    log.write(b"b" * 60)
    kept = (tmp_path / "x.log").read_bytes()
    assert kept == DROPPED + b"b" * 50  # over the cap: the oldest half went
    log.write(b"c" * 10)
    assert (tmp_path / "x.log").read_bytes().endswith(b"b" * 40 + b"c" * 10)


def test_vm_flags_for_access_and_env() -> None:
    spec = build_spec(
        SpecFlags(
            access_secret="key",
            access_user="ci",
            env=["A=1,2", "B="],
            env_secrets=["TOKEN=tokens:token"],
            delete_when_script_exits=True,
        )
    )
    assert spec["access"] == {"secretRef": {"name": "key"}, "user": "ci"}
    assert spec["env"] == [
        {"name": "A", "value": "1,2"},
        {"name": "B", "value": ""},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tokens", "key": "token"}}},
    ]
    assert spec["deleteWhenScriptExits"] is True
    with pytest.raises(CliError, match="NAME=SECRET:KEY"):
        build_spec(SpecFlags(env_secrets=["TOKEN=tokens"]))
    with pytest.raises(CliError, match="NAME=VALUE"):
        build_spec(SpecFlags(env=["novalue"]))
