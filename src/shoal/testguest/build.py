"""Build the tiny Linux test guest from Debian packages, and cache it.

The guest is Debian's cloud kernel booted directly by QEMU (`-kernel`/`-initrd`/`-append`), a
small initramfs that loads the virtio and ACPI-button modules and switch_roots into an ext4 root
disk, and on that disk busybox (init and userland), dropbear (sshd), OpenSSH's sftp-server and
scp, the few libraries they need, and shoal's fresh-identity hook /usr/lib/shoal/refresh-identity
(with reseed-crng, made by reseed.py, next to it). Everything comes from `.deb`s fetched with
`apt-get download` and unpacked with `dpkg-deb -x`; nothing is mounted, the disk is made with
`mkfs.ext4 -d` and converted to qcow2.

Cache layout (see `default_cache_dir`)::

    <cache>/lock                     fcntl lock held by a builder
    <cache>/debs/                    downloaded .debs, reused across builds
    <cache>/current-<recipe>.json    the build key last resolved for this recipe
    <cache>/<key>/                   a finished guest; complete only with its `done` file
    <cache>/tmp-*/                   a build in progress (renamed to <key> when done)

The key hashes the recipe (BUILD_VERSION and the guest's files) and the resolved package
versions. A warm call reads the pointer file and checks `done`: no apt, no lock.
"""

import contextlib
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shoal.testguest import guestfiles, reseed

# Bump when the build logic changes in a way the recipe hash (guest files, package list,
# command line, modules) does not see.
BUILD_VERSION = "6"

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
PACKAGES = (
    "busybox-static",
    "dropbear-bin",
    "openssh-sftp-server",
    "openssh-client",  # only its scp, for `scp -O` (dropbear-bin ships no scp)
    "bash",  # CI systems write their job scripts for bash (gitlab-runner's default shell)
    "git",  # only the git binary: a CI job's checkout is a real `git fetch`
    "libc6",
    "libcrypt1",
    "zlib1g",
    "libtomcrypt1",
    "libtommath1",
    "libgmp10",
    "libtinfo6",
    "libpcre2-8-0",
)
# Programs copied onto the root disk from the unpacked packages; their shared libraries follow.
PROGRAMS = (
    "usr/sbin/dropbear",
    "usr/bin/dropbearkey",  # for the refresh-identity hook's new host keys
    "usr/lib/openssh/sftp-server",
    "usr/lib/sftp-server",  # symlink; the path dropbear runs for the sftp subsystem
    "usr/bin/scp",
    "bin/bash",
    "usr/bin/git",
)
# Modules the initramfs loads (with their dependencies) unless the kernel has them built in.
MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ext4", "button", "evdev")
LIBRARY_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib")

SSH_USER = "root"
ADDRESS = "10.0.2.15"
PREFIX = "24"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
# cryptomgr.notests skips the crypto self-tests: about 0.4 s of a TCG boot.
CMDLINE = "console=ttyS0 root=/dev/vda rw quiet panic=-1 cryptomgr.notests"
DISK_SIZE = 128 * 2**20
READY_LINE = "shoal-test-guest: ssh ready"
# Firmware that boots a bootable-disk variant of the guest (bootdisk.py) instead of QEMU's
# direct kernel boot: SeaBIOS (QEMU's default) or OVMF, from Debian's ovmf package. The qemu
# backend finds the variable-store template next to the code (CODE -> VARS in the name).
Firmware = Literal["bios", "uefi"]
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

Progress = Callable[[str], None]


class TestGuestError(RuntimeError):
    """Building the test guest failed."""


@dataclass(frozen=True)
class TestGuest:
    """A built test guest. The files live in the cache; treat them as read-only."""

    kernel: Path  # vmlinuz
    initrd: Path  # gzip'd newc initramfs
    disk: Path  # qcow2 root disk: a base image, boot an overlay of it (create_overlay)
    cmdline: str  # kernel command line
    private_key: Path  # OpenSSH private key for ssh_user
    ssh_user: str
    address: str  # the guest's address on QEMU's user-mode network

    __test__ = False  # not a pytest test class, despite the name

    def create_overlay(self, path: Path) -> Path:
        """A fresh qcow2 overlay backed by the base disk, for one boot."""
        base = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.disk)]
        _run([*base, str(path)])
        return path

    def qemu_command(
        self,
        disk: Path,
        *,
        ssh_port: int,
        accel: str = "tcg",
        memory_mib: int = 256,
        serial: str = "mon:stdio",
        qmp_socket: Path | None = None,
        qemu: str = "qemu-system-x86_64",
        firmware: Firmware | None = None,
        uefi_vars: Path | None = None,
    ) -> list[str]:
        """QEMU's argv to boot this guest from `disk` (an overlay), port-forwarding
        127.0.0.1:`ssh_port` to the guest's sshd. `serial` is a QEMU chardev spec such as
        `mon:stdio` or `file:/path/console.log`.

        Without `firmware` QEMU boots the kernel directly. With it, `disk` is an overlay of
        `bootable_disk(guest, firmware)` and the firmware boots it; "uefi" also needs
        `uefi_vars`, a writable copy of OVMF_VARS."""
        argv = [
            qemu,
            "-machine", "q35",
            "-accel", accel,
            "-cpu", "host" if accel == "kvm" else "max",
            "-m", str(memory_mib),
            "-smp", "1",
            "-nodefaults",
            "-no-user-config",
            "-display", "none",
            "-serial", serial,
        ]  # fmt: skip
        if firmware is None:
            argv += ["-kernel", str(self.kernel), "-initrd", str(self.initrd)]
            argv += ["-append", self.cmdline]
        elif firmware == "uefi":
            if uefi_vars is None:
                raise ValueError("firmware uefi needs uefi_vars, a writable copy of OVMF_VARS")
            argv += [
                "-drive", f"if=pflash,format=raw,readonly=on,file={_qemu_opt(str(OVMF_CODE))}",
                "-drive", f"if=pflash,format=raw,file={_qemu_opt(str(uefi_vars))}",
            ]  # fmt: skip
        argv += [
            "-drive", f"file={_qemu_opt(str(disk))},if=virtio,format=qcow2",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
            "-device", "virtio-net-pci,netdev=n0,romfile=",
            "-no-reboot",
        ]  # fmt: skip
        if qmp_socket is not None:
            argv += ["-qmp", f"unix:{_qemu_opt(str(qmp_socket))},server=on,wait=off"]
        return argv

    def ssh_options(self) -> list[str]:
        """Options for OpenSSH's ssh/scp/sftp to log in (add `-p`/`-P` and the target)."""
        return [
            "-i", str(self.private_key),
            "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip


def default_cache_dir() -> Path:
    """`$SHOAL_CACHE_DIR/test-guest`, or `./.cache/test-guest` without that variable."""
    base = os.environ.get("SHOAL_CACHE_DIR")
    return (Path(base) if base else Path.cwd() / ".cache") / "test-guest"


def build_test_guest(
    cache_dir: Path | None = None,
    *,
    progress: Progress | None = None,
    refresh: bool = False,
) -> TestGuest:
    """The test guest, built on first use and cached in `cache_dir` (default_cache_dir()).

    A cached guest is reused without running apt. `refresh=True` resolves the package
    versions again (from the local package lists) and builds anew if they changed.
    """
    say: Progress = progress or (lambda _line: None)
    cache = (cache_dir or default_cache_dir()).absolute()
    recipe = _recipe_hash()
    pointer = cache / f"current-{recipe[:16]}.json"
    if not refresh and (guest := _cached(cache, pointer)) is not None:
        return guest
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / "lock", say):
        if not refresh and (guest := _cached(cache, pointer)) is not None:
            return guest  # another process built it while we waited
        for stale in [*cache.glob("tmp-*"), *cache.glob("debs/.download-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a builder that died
        say("resolving package versions")
        packages = _resolve_packages(say)
        key = _build_key(recipe, packages)
        final = cache / key
        if not (final / "done").exists():
            if final.exists():
                shutil.rmtree(final)
            debs = _download(packages, cache / "debs", say)
            tmp = Path(tempfile.mkdtemp(prefix="tmp-", dir=cache))
            try:
                _build(tmp, debs, packages, key, say)
                (tmp / "guest" / "done").write_text(key + "\n")
                (tmp / "guest").rename(final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            say(f"built test guest in {final}")
        _write_atomic(pointer, json.dumps({"key": key}) + "\n")
        guest = _load(final)
    return guest


def cached_test_guest(cache_dir: Path | None = None) -> TestGuest | None:
    """The test guest if a build of the current recipe is in the cache; never builds."""
    cache = (cache_dir or default_cache_dir()).absolute()
    return _cached(cache, cache / f"current-{_recipe_hash()[:16]}.json")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- cache ---------------------------------------------------------------------------------


def _recipe_hash() -> str:
    h = hashlib.sha256()
    for part in (BUILD_VERSION, KERNEL_METAPACKAGE, CMDLINE, ADDRESS, GATEWAY, DNS, str(DISK_SIZE)):
        h.update(part.encode() + b"\0")
    for part in (*PACKAGES, *PROGRAMS, *MODULES, *guestfiles.ALL):
        h.update(part.encode() + b"\0")
    h.update(reseed.reseed_elf())
    return h.hexdigest()


def _build_key(recipe: str, packages: "list[_Package]") -> str:
    h = hashlib.sha256(recipe.encode())
    for p in sorted(packages, key=lambda p: p.name):
        h.update(f"{p.name}={p.version}:{p.arch}\0".encode())
    return h.hexdigest()[:20]


def _cached(cache: Path, pointer: Path) -> TestGuest | None:
    try:
        key = json.loads(pointer.read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(key, str) or not key or "/" in key:
        return None
    final = cache / key
    if not (final / "done").exists():
        return None
    try:
        return _load(final)
    except (OSError, ValueError, KeyError):
        return None


def _load(final: Path) -> TestGuest:
    manifest = json.loads((final / "guest.json").read_text())
    return TestGuest(
        kernel=final / "vmlinuz",
        initrd=final / "initramfs.img",
        disk=final / "root.qcow2",
        cmdline=str(manifest["cmdline"]),
        private_key=final / "id_ed25519",
        ssh_user=str(manifest["ssh_user"]),
        address=str(manifest["address"]),
    )


@contextlib.contextmanager
def _locked(path: Path, say: Progress) -> Iterator[None]:
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another build of the test guest ({path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- packages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Package:
    name: str
    version: str
    arch: str

    @property
    def deb_name(self) -> str:
        """The file name `apt-get download` gives the package (epoch colon as %3a)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def _resolve_packages(say: Progress) -> list[_Package]:
    names = [KERNEL_METAPACKAGE, *PACKAGES]
    stanzas = _apt_show(names, say)
    meta = stanzas[KERNEL_METAPACKAGE]
    kernel = next(
        (
            dep.split()[0]
            for dep in _dependencies(meta.get("Depends", ""))
            if dep.startswith("linux-image-") and dep.split()[0] != KERNEL_METAPACKAGE
        ),
        None,
    )
    if kernel is None:
        raise TestGuestError(f"cannot find the kernel package {KERNEL_METAPACKAGE} depends on")
    stanzas.update(_apt_show([kernel], say))
    out = [
        _Package(name, stanzas[name]["Version"], stanzas[name]["Architecture"])
        for name in (kernel, *PACKAGES)
    ]
    say("packages: " + ", ".join(f"{p.name} {p.version}" for p in out))
    return out


def _dependencies(field: str) -> list[str]:
    """The first alternative of each dependency in a Depends field, with its version clause."""
    return [dep.split("|")[0].strip() for dep in field.split(",") if dep.strip()]


def _apt_show(names: list[str], say: Progress) -> dict[str, dict[str, str]]:
    argv = ["apt-cache", "show", "--no-all-versions", *names]
    result = _attempt(argv)
    stanzas = _parse_stanzas(result.stdout)
    if result.returncode != 0 or any(n not in stanzas for n in names):
        _apt_update(say)
        stanzas = _parse_stanzas(_run(argv))
    missing = [n for n in names if n not in stanzas]
    if missing:
        raise TestGuestError(f"apt knows no package {', '.join(missing)}")
    return stanzas


def _parse_stanzas(text: str) -> dict[str, dict[str, str]]:
    stanzas: dict[str, dict[str, str]] = {}
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        last = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t"):
                if last:
                    fields[last] += "\n" + line.strip()
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        if "Package" in fields and "Version" in fields:
            stanzas.setdefault(fields["Package"], fields)
    return stanzas


_updated = False


def _apt_update(say: Progress) -> None:
    global _updated
    if _updated:
        return
    say("package lists look stale: apt-get update")
    _run(["apt-get", "update", "-qq"])
    _updated = True


def _download(packages: list[_Package], debs_dir: Path, say: Progress) -> dict[str, Path]:
    debs_dir.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not (debs_dir / p.deb_name).exists()]
    if missing:
        say("downloading " + ", ".join(p.name for p in missing))
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=debs_dir))
        try:
            argv = ["apt-get", "download", "-q"]
            if os.geteuid() == 0:
                argv += ["-o", "APT::Sandbox::User=root"]  # _apt may not write in our cache
            argv += [f"{p.name}={p.version}" for p in missing]
            if _attempt(argv, cwd=tmp).returncode != 0:
                _apt_update(say)
                _run(argv, cwd=tmp)
            for p in missing:
                got = tmp / p.deb_name
                if not got.exists():
                    raise TestGuestError(f"apt-get download did not produce {p.deb_name}")
                os.replace(got, debs_dir / p.deb_name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {p.name: debs_dir / p.deb_name for p in packages}


# --- build ---------------------------------------------------------------------------------


def _build(
    tmp: Path, debs: dict[str, Path], packages: list[_Package], key: str, say: Progress
) -> None:
    tree = tmp / "tree"  # all packages unpacked together
    staging = tmp / "rootfs"  # the root disk's contents
    out = tmp / "guest"
    for d in (tree, staging, out):
        d.mkdir()
    say("unpacking packages")
    for deb in debs.values():
        _run(["dpkg-deb", "-x", str(deb), str(tree)])

    kernel_pkg = next(p for p in packages if p.name.startswith("linux-image-"))
    release = kernel_pkg.name.removeprefix("linux-image-")
    vmlinuz = tree / "boot" / f"vmlinuz-{release}"
    if not vmlinuz.exists():
        raise TestGuestError(f"{kernel_pkg.name} has no boot/vmlinuz-{release}")
    shutil.copyfile(vmlinuz, out / "vmlinuz")

    say("making the initramfs")
    modules = _resolve_modules(tree / "lib" / "modules" / release, MODULES)
    (out / "initramfs.img").write_bytes(_initramfs(tree, modules))

    say("populating the root filesystem")
    _populate_rootfs(tree, staging)
    say("generating keys")
    user_public = _user_key(out / "id_ed25519")
    (staging / "root" / ".ssh" / "authorized_keys").write_text(user_public + "\n")
    os.chmod(staging / "root" / ".ssh" / "authorized_keys", 0o600)
    host_public = _host_key(tree, staging / "etc" / "dropbear" / "dropbear_ed25519_host_key")
    (out / "host_ed25519.pub").write_text(host_public + "\n")

    say("making the root disk (mkfs.ext4 -d, qemu-img convert)")
    raw = tmp / "root.ext4"
    with open(raw, "wb") as f:
        f.truncate(DISK_SIZE)
    _run([
        "mkfs.ext4", "-q", "-F", "-T", "default", "-L", "shoal-root", "-m", "0",
        "-E", "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
        "-d", str(staging), str(raw),
    ])  # fmt: skip
    if os.geteuid() != 0:
        _chown_to_root(staging, raw)
    _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out / "root.qcow2")])
    raw.unlink()

    manifest = {
        "key": key,
        "build_version": BUILD_VERSION,
        "kernel_release": release,
        "packages": {p.name: p.version for p in packages},
        "modules": [name for name, _ in modules],
        "cmdline": CMDLINE,
        "ssh_user": SSH_USER,
        "address": ADDRESS,
    }
    (out / "guest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _populate_rootfs(tree: Path, staging: Path) -> None:
    for d, mode in (
        ("bin", 0o755), ("sbin", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755),
        ("etc/init.d", 0o755), ("etc/acpi/PWRF", 0o755), ("etc/dropbear", 0o755),
        ("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("run", 0o755), ("tmp", 0o1777),
        ("var/log", 0o755), ("root/.ssh", 0o700), ("usr/lib/shoal", 0o755),
        ("usr/share/git-core/templates", 0o755),  # git init warns when it is missing
    ):  # fmt: skip
        (staging / d).mkdir(parents=True, exist_ok=True)
        os.chmod(staging / d, mode)
    os.chmod(staging / "root", 0o700)
    (staging / "var" / "run").symlink_to("/run")

    for program in PROGRAMS:
        _copy_with_libraries(tree, program, staging)
    shutil.copy2(tree / "bin" / "busybox", staging / "bin" / "busybox")
    applets = _run([str(tree / "bin" / "busybox"), "--list-full"]).split()
    for applet in applets:
        link = staging / applet
        if not link.is_symlink() and not link.exists():  # a real program wins over busybox
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")

    values = {"ADDRESS": ADDRESS, "PREFIX": PREFIX, "GATEWAY": GATEWAY, "DNS": DNS}
    files = {
        "etc/inittab": (guestfiles.INITTAB, 0o644),
        "etc/init.d/rcS": (guestfiles.RCS, 0o755),
        "etc/init.d/announce": (guestfiles.ANNOUNCE, 0o755),
        "etc/init.d/rcK": (guestfiles.RCK, 0o755),
        "etc/acpi/PWRF/00000080": (guestfiles.POWER_BUTTON, 0o755),
        "etc/profile": (guestfiles.PROFILE, 0o644),
        "etc/passwd": (guestfiles.PASSWD, 0o644),
        "etc/shadow": (guestfiles.SHADOW, 0o600),
        "etc/group": (guestfiles.GROUP, 0o644),
        "etc/shells": (guestfiles.SHELLS, 0o644),
        "etc/hostname": (guestfiles.HOSTNAME, 0o644),
        "etc/hosts": (guestfiles.HOSTS, 0o644),
        "etc/resolv.conf": (guestfiles.RESOLV_CONF, 0o644),
        guestfiles.REFRESH_IDENTITY_PATH.lstrip("/"): (guestfiles.REFRESH_IDENTITY, 0o755),
        guestfiles.SSHD_LOOP_PATH.lstrip("/"): (guestfiles.SSHD_LOOP, 0o755),
    }
    for rel, (template, mode) in files.items():
        path = staging / rel
        path.write_text(guestfiles.render(template, **values))
        os.chmod(path, mode)
    reseed_crng = staging / guestfiles.RESEED_CRNG_PATH.lstrip("/")
    reseed_crng.write_bytes(reseed.reseed_elf())
    os.chmod(reseed_crng, 0o755)


def _copy_with_libraries(tree: Path, rel: str, staging: Path) -> None:
    """Copy `rel` (following symlinks within the tree), its interpreter and the shared
    libraries it needs, transitively, from the unpacked tree to the same paths in staging."""
    pending = [rel]
    done: set[str] = set()
    while pending:
        item = pending.pop()
        if item in done:
            continue
        done.add(item)
        src = tree / item
        if not src.is_symlink() and not src.exists():
            raise TestGuestError(f"{item} is not in the unpacked packages")
        dst = staging / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target = os.readlink(src)
            if not dst.is_symlink():
                dst.symlink_to(target)
            resolved = Path(target) if target.startswith("/") else Path(item).parent / target
            pending.append(os.path.normpath(str(resolved)).lstrip("/"))
            continue
        shutil.copy2(src, dst)
        data = src.read_bytes()
        if not data.startswith(b"\x7fELF"):
            continue
        elf = _Elf(data)
        if (interp := elf.interpreter()) is not None:
            pending.append(interp.lstrip("/"))
        for needed in elf.needed():
            pending.append(_find_library(tree, needed))


def _find_library(tree: Path, name: str) -> str:
    for d in LIBRARY_DIRS:
        candidate = tree / d / name
        if candidate.is_symlink() or candidate.exists():
            return f"{d}/{name}"
    raise TestGuestError(f"shared library {name} is in none of the packages; add its package")


def _user_key(path: Path) -> str:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = public.decode() + " shoal-test-guest"
    path.with_name(path.name + ".pub").write_text(line + "\n")
    return line


def _host_key(tree: Path, path: Path) -> str:
    """Generate dropbear's ed25519 host key with the packaged dropbearkey, run through the
    packaged dynamic loader and libraries so the host's own libraries do not matter."""
    loader = tree / "lib64" / "ld-linux-x86-64.so.2"
    libs = ":".join(str(tree / d) for d in LIBRARY_DIRS[:2])
    dropbearkey = [str(loader), "--library-path", libs, str(tree / "usr" / "bin" / "dropbearkey")]
    _run([*dropbearkey, "-t", "ed25519", "-f", str(path)])
    os.chmod(path, 0o600)
    listing = _run([*dropbearkey, "-y", "-f", str(path)])
    for line in listing.splitlines():
        if line.startswith("ssh-ed25519 "):
            return line.strip()
    raise TestGuestError(f"dropbearkey -y printed no public key:\n{listing}")


def _chown_to_root(staging: Path, image: Path) -> None:
    """Built as non-root, mkfs.ext4 -d copied our uid/gid; make every inode root's."""
    commands = []
    for dirpath, dirnames, filenames in os.walk(staging):
        for name in [*dirnames, *filenames]:
            rel = "/" + str(Path(dirpath, name).relative_to(staging))
            commands += [f'sif "{rel}" uid 0', f'sif "{rel}" gid 0']
    script = image.with_suffix(".debugfs")
    script.write_text("\n".join(commands) + "\n")
    _run(["debugfs", "-w", "-f", str(script), str(image)])
    script.unlink()


# --- kernel modules and initramfs -----------------------------------------------------------


def _resolve_modules(moddir: Path, wanted: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(name, file) for the wanted modules that are not built in, dependencies first."""
    if not moddir.is_dir():
        raise TestGuestError(f"no kernel modules in {moddir}")
    builtin = {
        _module_name(line.strip())
        for line in (moddir / "modules.builtin").read_text().splitlines()
        if line.strip()
    }
    files = {_module_name(str(p)): p for p in moddir.rglob("*.ko*")}
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen or name in builtin:
            return
        if name in chain:
            raise TestGuestError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        path = files.get(name)
        if path is None:
            raise TestGuestError(f"kernel module {name} is neither built in nor in {moddir}")
        for dep in _modinfo(_module_bytes(path)).get("depends", "").split(","):
            if dep:
                visit(_module_name(dep), (*chain, name))
        seen.add(name)
        order.append((name, path))

    for name in wanted:
        visit(name, ())
    return order


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in (".xz", ".gz", ".zst"):
        base = base.removesuffix(suffix)
    return base.removesuffix(".ko").replace("-", "_")


def _module_bytes(path: Path) -> bytes:
    """The module's ELF image; compressed modules are decompressed (busybox insmod can't)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        raise TestGuestError(f"{path.name}: zstd-compressed modules are not supported")
    return data


def _modinfo(data: bytes) -> dict[str, str]:
    info: dict[str, str] = {}
    raw = _Elf(data).section(".modinfo") or b""
    for item in raw.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, value)
    return info


def _initramfs(tree: Path, modules: list[tuple[str, Path]]) -> bytes:
    cpio = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"):
        cpio.directory(d)
    cpio.chardev("dev/console", 5, 1, 0o600)  # init's stdio, before devtmpfs is mounted
    cpio.file("bin/busybox", (tree / "bin" / "busybox").read_bytes(), 0o755)
    for applet in ("sh", "mount", "insmod", "usleep", "switch_root"):
        cpio.symlink(f"bin/{applet}", "busybox")
    for name, path in modules:
        cpio.file(f"lib/modules/{name}.ko", _module_bytes(path), 0o644)
    init = guestfiles.render(guestfiles.INITRAMFS_INIT, MODULES=" ".join(n for n, _ in modules))
    cpio.file("init", init.encode(), 0o755)
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


class _Cpio:
    """A newc ("070701") cpio archive, as the kernel unpacks into its initramfs."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._ino = 0

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, b"", nlink=2)

    def file(self, name: str, data: bytes, perm: int) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int) -> None:
        self._entry(name, stat.S_IFCHR | perm, b"", rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"", nlink=1)
        return bytes(self._out)

    def _entry(
        self, name: str, mode: int, data: bytes, *, nlink: int = 1, rdev: tuple[int, int] = (0, 0)
    ) -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        self._out += b"070701" + b"".join(b"%08x" % value for value in fields) + encoded
        self._pad()
        self._out += data
        self._pad()

    def _pad(self) -> None:
        self._out += b"\0" * (-len(self._out) % 4)


class _Elf:
    """Just enough of a little-endian ELF64 reader: named sections, .interp, DT_NEEDED."""

    def __init__(self, data: bytes) -> None:
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise TestGuestError("not a little-endian ELF64 file")
        self.data = data
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        headers = [
            struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
        ]
        names_off, names_size = headers[shstrndx][4], headers[shstrndx][5]
        names = data[names_off : names_off + names_size]
        # name -> (offset, size, link)
        self.sections: dict[str, tuple[int, int, int]] = {}
        self._by_index: list[tuple[int, int]] = []
        for h in headers:
            name = names[h[0] : names.index(b"\0", h[0])].decode()
            self.sections.setdefault(name, (h[4], h[5], h[6]))
            self._by_index.append((h[4], h[5]))

    def section(self, name: str) -> bytes | None:
        if name not in self.sections:
            return None
        offset, size, _ = self.sections[name]
        return self.data[offset : offset + size]

    def interpreter(self) -> str | None:
        raw = self.section(".interp")
        return raw.rstrip(b"\0").decode() if raw else None

    def needed(self) -> list[str]:
        if ".dynamic" not in self.sections:
            return []
        offset, size, link = self.sections[".dynamic"]
        str_off, str_size = self._by_index[link]
        strtab = self.data[str_off : str_off + str_size]
        out = []
        for i in range(size // 16):
            tag, value = struct.unpack_from("<qQ", self.data, offset + 16 * i)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                out.append(strtab[value : strtab.index(b"\0", value)].decode())
        return out


# --- helpers -------------------------------------------------------------------------------


def _attempt(argv: list[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise TestGuestError(
            f"{argv[0]} is not installed (the test guest needs a Debian host)"
        ) from e


def _run(argv: list[str], *, cwd: Path | None = None) -> str:
    result = _attempt(argv, cwd=cwd)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise TestGuestError(f"{' '.join(argv)} failed ({result.returncode}):\n{output}")
    return result.stdout


def _qemu_opt(value: str) -> str:
    """Escape a value inside a QEMU option list (a comma is written as two)."""
    return value.replace(",", ",,")
