"""Bootable-disk variants of the test guest: its kernel, initramfs and root filesystem on one
partitioned disk that the firmware boots by itself, the way real images boot (an Image with
`boot: disk`), instead of QEMU's direct kernel boot.

Both variants are made from files, with nothing mounted (sector = 512 bytes)::

    bios  MBR (syslinux mbr.bin boot code)  sectors 0..2047      boot code + partition table
          partition 1  FAT16, active, 0x0e  sectors 2048..       syslinux (ldlinux.sys/.c32),
                                                                 syslinux.cfg, kernel, initrd
          partition 2  ext4 root, 0x83      after the FAT        the guest's root disk as is
    uefi  protective MBR + GPT              sectors 0..33, backup GPT in the last 33
          partition 1  EFI system (FAT16)   sectors 2048..       EFI/BOOT/BOOTX64.EFI (syslinux
                                                                 efi64), ldlinux.e64,
                                                                 syslinux.cfg, kernel, initrd
          partition 2  ext4 root (Linux fs) after the ESP        the guest's root disk as is

SeaBIOS runs mbr.bin, which chain-loads the active partition's boot sector (syslinux's, written
by `syslinux --install` through mtools), which loads ldlinux.sys. OVMF finds no boot entries in
its fresh variable store and falls back to the removable-media path \\EFI\\BOOT\\BOOTX64.EFI on
the ESP. Either way syslinux reads syslinux.cfg and starts the kernel with the guest's command
line, `root=/dev/vda2`. The loader files come from the host's syslinux, syslinux-common and
syslinux-efi packages; partitions are laid out with sfdisk on the disk file, the FAT made with
mkfs.fat and filled with mtools, and everything written at its offset from Python.

A variant is cached next to the guest it is made from (`<guest dir>/boot-<firmware>-<key>.qcow2`,
written under a temporary name and renamed), keyed by the layout, the config, the command line
and the bytes of the loader files, so a change to any of them builds a new one.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from shoal.testguest.build import (
    Firmware,
    Progress,
    TestGuest,
    TestGuestError,
    _locked,
    _run,
)

FIRMWARES: tuple[Firmware, ...] = ("bios", "uefi")

# Bump when the layout or the way the disk is written changes in a way the key does not see.
BOOTDISK_VERSION = "1"

SECTOR = 512
FIRST_SECTOR = 2048  # partitions start on 1 MiB boundaries
BOOT_PARTITION_SIZE = 32 * 2**20  # FAT16; the kernel and the initramfs take ~16 MB
GPT_BACKUP_SECTORS = 2048  # room left at the end for the backup GPT (33 sectors needed)
ROOT_DEVICE = "/dev/vda2"

# Where Debian's packages put the files (syslinux-common, syslinux-efi, ovmf).
MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")
SYSLINUX_EFI = Path("/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi")
LDLINUX_E64 = Path("/usr/lib/syslinux/modules/efi64/ldlinux.e64")

GPT_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GPT_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
# Fixed identifiers, so that a variant's bytes depend only on its inputs.
DISK_ID_MBR = "0x5348414c"
DISK_ID_GPT = "5348414c-0000-4000-8000-000000000000"
PART_UUIDS = ("5348414c-0001-4000-8000-000000000001", "5348414c-0002-4000-8000-000000000002")
FAT_VOLUME_ID = "5348414c"


def bootable_disk(
    guest: TestGuest, firmware: Firmware, *, progress: Progress | None = None
) -> Path:
    """A qcow2 disk that boots `guest` from its own partitions through `firmware` (SeaBIOS or
    OVMF), built on first use and cached next to the guest. Treat it as a read-only base and
    boot an overlay of it. Needs syslinux, mtools, dosfstools, fdisk and qemu-img on the host
    (and syslinux-efi for uefi); raises TestGuestError when one is missing."""
    if firmware not in FIRMWARES:
        raise ValueError(f"firmware must be one of {', '.join(FIRMWARES)}, not {firmware!r}")
    say: Progress = progress or (lambda _line: None)
    home = guest.disk.parent
    cmdline = _cmdline(guest.cmdline)
    config = _syslinux_cfg(firmware, cmdline)
    key = _key(firmware, config)  # the guest's own files never change: its dir is the rest
    final = home / f"boot-{firmware}-{key}.qcow2"
    if final.exists():
        return final
    with _locked(home / ".boot-lock", say):
        if final.exists():
            return final  # another process built it while we waited
        for stale in home.glob(".boot-tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a builder that died
        tmp = Path(tempfile.mkdtemp(prefix=".boot-tmp-", dir=home))
        try:
            say(f"making the {firmware} boot disk")
            _make(tmp, guest, firmware, config, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        say(f"built {final}")
    return final


def _cmdline(cmdline: str) -> str:
    """The guest's command line with the root filesystem on the disk's second partition."""
    args = [arg for arg in cmdline.split() if not arg.startswith("root=")]
    return " ".join([*args[:1], f"root={ROOT_DEVICE}", *args[1:]])


def _syslinux_cfg(firmware: Firmware, cmdline: str) -> str:
    # SERIAL (BIOS only; it must come first) puts syslinux's banner on the serial console.
    # syslinux.efi has no serial driver of its own, but OVMF copies its console there.
    serial = "SERIAL 0 115200\n" if firmware == "bios" else ""
    return (
        f"{serial}"
        "DEFAULT linux\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "LABEL linux\n"
        "  LINUX /vmlinuz\n"
        "  INITRD /initrd.img\n"
        f"  APPEND {cmdline}\n"
    )


def _loader_files(firmware: Firmware) -> list[Path]:
    if firmware == "bios":
        syslinux = shutil.which("syslinux")
        files = [Path(syslinux) if syslinux else Path("/usr/bin/syslinux"), MBR_BIN]
        packages = "syslinux and syslinux-common"
    else:
        files = [SYSLINUX_EFI, LDLINUX_E64]
        packages = "syslinux-efi"
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise TestGuestError(f"{', '.join(missing)} missing: install {packages} (make system-deps)")
    return files


def _key(firmware: Firmware, config: str) -> str:
    h = hashlib.sha256()
    layout = (BOOTDISK_VERSION, firmware, FIRST_SECTOR, BOOT_PARTITION_SIZE, GPT_BACKUP_SECTORS)
    for part in (*map(str, layout), config, DISK_ID_MBR, DISK_ID_GPT, *PART_UUIDS):
        h.update(part.encode() + b"\0")
    for path in _loader_files(firmware):
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def _make(tmp: Path, guest: TestGuest, firmware: Firmware, config: str, final: Path) -> None:
    root = tmp / "root.raw"
    _run(["qemu-img", "convert", "-O", "raw", str(guest.disk), str(root)])
    root_size = _round_up(root.stat().st_size, FIRST_SECTOR * SECTOR)
    boot_start = FIRST_SECTOR
    boot_sectors = BOOT_PARTITION_SIZE // SECTOR
    root_start = boot_start + boot_sectors
    root_sectors = root_size // SECTOR
    total = (root_start + root_sectors) * SECTOR
    if firmware == "uefi":
        total += GPT_BACKUP_SECTORS * SECTOR

    fat = tmp / "boot.fat"
    _make_fat(fat, guest, firmware, config, hidden_sectors=boot_start)

    disk = tmp / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(total)
    _partition(disk, firmware, (boot_start, boot_sectors), (root_start, root_sectors))
    if firmware == "bios":
        boot_code = _loader_files("bios")[1].read_bytes()
        if len(boot_code) != 440:
            raise TestGuestError(f"{MBR_BIN} is {len(boot_code)} bytes, not 440")
        _write_at(disk, 0, boot_code)  # the partition table after byte 440 stays
    _copy_at(fat, disk, boot_start * SECTOR)
    _copy_at(root, disk, root_start * SECTOR)

    partial = tmp / "disk.qcow2"
    _run(["qemu-img", "convert", "-O", "qcow2", str(disk), str(partial)])
    os.replace(partial, final)


def _make_fat(
    image: Path, guest: TestGuest, firmware: Firmware, config: str, *, hidden_sectors: int
) -> None:
    with open(image, "wb") as f:
        f.truncate(BOOT_PARTITION_SIZE)
    label = "SHOALBOOT" if firmware == "bios" else "SHOALESP"
    # Hidden sectors: the partition's offset, which the FAT boot sector (syslinux's) adds to
    # its own sector numbers.
    _run([
        _tool("mkfs.fat"), "-F", "16", "-n", label, "-i", FAT_VOLUME_ID, "-h", str(hidden_sectors),
        str(image),
    ])  # fmt: skip
    at = ["-i", str(image)]
    if firmware == "bios":
        # syslinux's boot sector, ldlinux.sys and ldlinux.c32, through mtools.
        _run(["syslinux", "--install", str(image)])
        cfg_dir = "::/"
    else:
        efi64, ldlinux = _loader_files("uefi")
        _mtools(["mmd", *at, "::/EFI", "::/EFI/BOOT"])
        _mtools(["mcopy", *at, str(efi64), "::/EFI/BOOT/BOOTX64.EFI"])
        _mtools(["mcopy", *at, str(ldlinux), "::/EFI/BOOT/ldlinux.e64"])
        cfg_dir = "::/EFI/BOOT/"  # syslinux.efi reads the config next to itself
    cfg = image.with_name("syslinux.cfg")
    cfg.write_text(config)
    _mtools(["mcopy", *at, str(cfg), cfg_dir + "syslinux.cfg"])
    _mtools(["mcopy", *at, str(guest.kernel), "::/vmlinuz"])
    _mtools(["mcopy", *at, str(guest.initrd), "::/initrd.img"])


def _partition(
    disk: Path, firmware: Firmware, boot: tuple[int, int], root: tuple[int, int]
) -> None:
    if firmware == "bios":
        script = (
            "label: dos\n"
            f"label-id: {DISK_ID_MBR}\n"
            "unit: sectors\n\n"
            f"start={boot[0]}, size={boot[1]}, type=e, bootable\n"
            f"start={root[0]}, size={root[1]}, type=83\n"
        )
    else:
        script = (
            "label: gpt\n"
            f"label-id: {DISK_ID_GPT}\n"
            "unit: sectors\n\n"
            f'start={boot[0]}, size={boot[1]}, type={GPT_ESP}, uuid={PART_UUIDS[0]}, name="EFI"\n'
            f'start={root[0]}, size={root[1]}, type={GPT_LINUX}, uuid={PART_UUIDS[1]}, name="root"\n'
        )
    argv = [_tool("sfdisk"), "--quiet", "--no-reread", "--no-tell-kernel", str(disk)]
    try:
        result = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise TestGuestError("sfdisk is not installed: install fdisk (make system-deps)") from e
    if result.returncode != 0:
        raise TestGuestError(f"sfdisk failed ({result.returncode}):\n{result.stderr.strip()}")


def _tool(name: str) -> str:
    """The program `name`, also from /usr/sbin and /sbin, which a non-root PATH may lack."""
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/sbin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return name  # running it reports it missing


def _mtools(argv: list[str]) -> None:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    try:
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise TestGuestError(f"{argv[0]} is not installed: install mtools") from e
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise TestGuestError(f"{' '.join(argv)} failed ({result.returncode}):\n{output}")


def _write_at(disk: Path, offset: int, data: bytes) -> None:
    with open(disk, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _copy_at(source: Path, disk: Path, offset: int, chunk: int = 2**20) -> None:
    """Write source into disk at offset, skipping all-zero chunks (the disk file is sparse and
    already zero there)."""
    zero = bytes(chunk)
    with open(source, "rb") as src, open(disk, "r+b") as dst:
        position = offset
        while block := src.read(chunk):
            if block != zero[: len(block)]:
                dst.seek(position)
                dst.write(block)
            position += len(block)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
