"""The test guest's hand-assembled `reseed-crng` program (shoal.testguest.reseed), run on this
host: it is a plain static x86-64 Linux executable."""

import os
import platform
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from shoal.testguest.reseed import LOAD_ADDRESS, reseed_elf

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64", reason="an x86-64 Linux program"
)

EPERM, ENOENT = 1, 2
CAP_SYS_ADMIN = 21


def program(tmp_path: Path, path: str = "/dev/urandom") -> Path:
    exe = tmp_path / "reseed-crng"
    exe.write_bytes(reseed_elf(path))
    exe.chmod(0o755)
    return exe


def has_cap_sys_admin() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    return False


def test_headers_describe_one_loadable_segment() -> None:
    data = reseed_elf()
    assert data[:4] == b"\x7fELF"
    assert data[4:8] == bytes([2, 1, 1, 0])  # 64-bit, little-endian, version 1, System V ABI
    e_type, e_machine, e_version, e_entry, e_phoff, e_shoff = struct.unpack_from(
        "<HHIQQQ", data, 16
    )
    assert (e_type, e_machine, e_version) == (2, 62, 1)  # ET_EXEC, EM_X86_64
    assert (e_phoff, e_shoff) == (64, 0)
    ehsize, phentsize, phnum, _, shnum, _ = struct.unpack_from("<HHHHHH", data, 52)
    assert (ehsize, phentsize, phnum, shnum) == (64, 56, 1, 0)
    p_type, p_flags, p_offset, p_vaddr, _, p_filesz, p_memsz, p_align = struct.unpack_from(
        "<IIQQQQQQ", data, 64
    )
    assert (p_type, p_flags, p_offset, p_vaddr) == (1, 5, 0, LOAD_ADDRESS)  # PT_LOAD, R+X
    assert p_filesz == p_memsz == len(data)
    assert p_align == 0x1000
    assert e_entry == LOAD_ADDRESS + 64 + 56  # code right after the headers
    assert data.endswith(b"/dev/urandom\0")
    assert len(data) < 256


def test_it_reseeds_the_crng(tmp_path: Path) -> None:
    result = subprocess.run([program(tmp_path)], capture_output=True, timeout=10)
    assert result.returncode == (0 if has_cap_sys_admin() else EPERM)
    assert result.stdout == result.stderr == b""


def test_a_missing_device_exits_with_enoent(tmp_path: Path) -> None:
    exe = program(tmp_path, str(tmp_path / "no-such-device"))
    assert subprocess.run([exe], timeout=10).returncode == ENOENT


@pytest.mark.skipif(os.geteuid() != 0, reason="drops root to a plain user")
def test_without_root_it_exits_with_eperm() -> None:
    # pytest's tmp_path sits under a directory only root may enter
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        exe = program(Path(tmp))
        assert subprocess.run([exe], user=65534, group=65534, timeout=10).returncode == EPERM
