"""Registry credentials from shoal's file and the docker config file."""

import base64
import json
import stat
from pathlib import Path

import pytest

from shoal.images import credentials


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_save_lookup_remove(tmp_path: Path) -> None:
    assert credentials.lookup("r.example:5000") is None
    path = credentials.save_login("r.example:5000", "ann", "pa:ss")
    assert path == tmp_path / "shoal-config" / "registries.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credentials.lookup("r.example:5000") == ("ann", "pa:ss")
    assert credentials.lookup("R.EXAMPLE:5000") == ("ann", "pa:ss")
    assert credentials.lookup("r.example") is None  # another port is another registry
    credentials.save_login("https://r.example:5000/", "bob", "x")
    assert credentials.lookup("r.example:5000") == ("bob", "x")
    assert len(json.loads(path.read_text())["auths"]) == 1
    assert credentials.remove_login("r.example:5000")
    assert credentials.lookup("r.example:5000") is None
    assert not credentials.remove_login("r.example:5000")


def test_user_name_checked() -> None:
    with pytest.raises(ValueError, match="user name"):
        credentials.save_login("r.example", "a:b", "x")


def test_docker_config_is_read(tmp_path: Path) -> None:
    docker = tmp_path / "docker-config" / "config.json"
    docker.parent.mkdir()
    docker.write_text(
        json.dumps(
            {
                "auths": {
                    "https://r.example:5000/v1/": {"auth": _auth("dock", "er")},
                    "plain.example": {"username": "u", "password": "p"},
                    "broken.example": {"auth": "%%%"},
                }
            }
        )
    )
    assert credentials.lookup("r.example:5000") == ("dock", "er")
    assert credentials.lookup("plain.example") == ("u", "p")
    assert credentials.lookup("broken.example") is None
    credentials.save_login("r.example:5000", "mine", "pw")
    assert credentials.lookup("r.example:5000") == ("mine", "pw")  # shoal's file first
    credentials.remove_login("r.example:5000")
    assert credentials.lookup("r.example:5000") == ("dock", "er")  # docker's file untouched


def test_file_sits_next_to_the_contexts_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHOAL_CONFIG_DIR")
    monkeypatch.setenv("SHOAL_CONFIG", str(tmp_path / "elsewhere" / "config.yaml"))
    assert credentials.shoal_path() == tmp_path / "elsewhere" / "registries.json"
    monkeypatch.delenv("SHOAL_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert credentials.shoal_path() == tmp_path / "xdg" / "shoal" / "registries.json"


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "shoal-config" / "registries.json"
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"registries.json"):
        credentials.lookup("r.example")
