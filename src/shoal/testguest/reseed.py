"""`reseed-crng`: a tiny static x86-64 Linux program that makes the kernel reseed its CRNG.

After a VM is restored from saved memory, every clone of that memory image has the same CRNG
state, and a kernel without VM generation ID support (the test guest's 6.1) reseeds only on its
own timer: until then the clones read the same bytes from /dev/urandom. Writing fresh bytes into
/dev/urandom mixes them into the input pool only; the RNDRESEEDCRNG ioctl (root only,
CAP_SYS_ADMIN) makes the kernel reseed the CRNG from that pool now.

The guest has neither a compiler nor python and the build machine need not have one either, so
the program is written here as machine code, by hand. It does, in C terms::

    int fd = open(path, O_RDONLY);            // path: "/dev/urandom"
    if (fd < 0) _exit(-fd);                   // the raw syscall returns -errno
    _exit(-ioctl(fd, RNDRESEEDCRNG, 0));      // 0 on success

so it exits 0 on success and with the errno on failure (all of Linux's are below 256): EPERM 1
without CAP_SYS_ADMIN, ENOENT 2 without the device, ENODATA 61 while the CRNG is not yet ready.

File layout (one read+execute PT_LOAD segment maps the whole file at LOAD_ADDRESS)::

    0x00  ELF64 header            64 bytes
    0x40  program header          56 bytes (PT_LOAD)
    0x78  code                    entry point
    ....  path, NUL-terminated
"""

import struct

LOAD_ADDRESS = 0x400000  # the usual base of a non-PIE x86-64 executable; page aligned
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07): no argument, direction none, type 'R' (0x52), nr 7

# x86-64 Linux system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
SYS_OPEN = 2
SYS_IOCTL = 16
SYS_EXIT = 60

_EHDR_SIZE = 64
_PHDR_SIZE = 56

# Instructions used, with their encodings (Intel SDM vol. 2). All the 32-bit register writes
# zero the upper half of the 64-bit register, so `mov eax, imm32` sets all of rax.
_SYSCALL = b"\x0f\x05"  # syscall: number in rax, args in rdi, rsi, rdx; result in rax
_XOR_ESI_ESI = b"\x31\xf6"  # xor esi, esi         (31 /r, ModRM 11 110 110)
_XOR_EDX_EDX = b"\x31\xd2"  # xor edx, edx         (31 /r, ModRM 11 010 010)
_MOV_EDI_EAX = b"\x89\xc7"  # mov edi, eax         (89 /r, ModRM 11 000 111)
_TEST_EAX_EAX = b"\x85\xc0"  # test eax, eax       (85 /r, ModRM 11 000 000)
_NEG_EAX = b"\xf7\xd8"  # neg eax                  (F7 /3, ModRM 11 011 000)


def _mov_eax(imm: int) -> bytes:
    """mov eax, imm32 (B8+rd id, rd = 0 for eax)."""
    return b"\xb8" + struct.pack("<I", imm)


def _mov_esi(imm: int) -> bytes:
    """mov esi, imm32 (B8+rd id, rd = 6 for esi)."""
    return b"\xbe" + struct.pack("<I", imm)


def _lea_rdi_rip(displacement: int) -> bytes:
    """lea rdi, [rip + disp32] (REX.W 8D /r, ModRM 00 111 101 = RIP-relative); the
    displacement counts from the end of this 7-byte instruction."""
    return b"\x48\x8d\x3d" + struct.pack("<i", displacement)


def _js(displacement: int) -> bytes:
    """js rel8 (78 cb): jump if the sign flag is set, counting from the end of these 2 bytes."""
    return b"\x78" + struct.pack("<b", displacement)


def _code(path: bytes) -> bytes:
    """The program's code followed by its data, `path` NUL-terminated."""
    # Built from the end, as each jump and address is relative to what follows it.
    exit_with_minus_rax = (
        _NEG_EAX  # 0 stays 0; -errno (from open or ioctl) becomes errno
        + _MOV_EDI_EAX  # exit status
        + _mov_eax(SYS_EXIT)
        + _SYSCALL  # exit(status); does not return
    )
    ioctl = (
        _MOV_EDI_EAX  # fd (from open)
        + _mov_eax(SYS_IOCTL)
        + _mov_esi(RNDRESEEDCRNG)  # request
        + _XOR_EDX_EDX  # argument: none (0)
        + _SYSCALL  # rax = ioctl(fd, RNDRESEEDCRNG, 0): 0 or -errno
    )  # falls through into exit_with_minus_rax
    after_lea = (
        _XOR_ESI_ESI  # flags: O_RDONLY (0)
        + _SYSCALL  # rax = open(path, O_RDONLY): fd or -errno
        + _TEST_EAX_EAX
        + _js(len(ioctl))  # negative: skip the ioctl, exit with the errno
    )
    to_path = len(after_lea) + len(ioctl) + len(exit_with_minus_rax)
    return (
        _mov_eax(SYS_OPEN)
        + _lea_rdi_rip(to_path)  # rdi = address of path
        + after_lea
        + ioctl
        + exit_with_minus_rax
        + path
        + b"\0"
    )


def reseed_elf(path: str = "/dev/urandom") -> bytes:
    """The whole executable: run it as root to reseed the CRNG; `path` is the device it opens
    (a parameter for tests)."""
    encoded = path.encode()
    if b"\0" in encoded:
        raise ValueError("path must not contain NUL")
    code = _code(encoded)
    entry = LOAD_ADDRESS + _EHDR_SIZE + _PHDR_SIZE
    size = _EHDR_SIZE + _PHDR_SIZE + len(code)
    ident = (
        b"\x7fELF"  # magic
        + bytes([2])  # EI_CLASS: ELFCLASS64
        + bytes([1])  # EI_DATA: ELFDATA2LSB (little-endian)
        + bytes([1])  # EI_VERSION: EV_CURRENT
        + bytes([0])  # EI_OSABI: ELFOSABI_SYSV
    ).ljust(16, b"\0")  # EI_ABIVERSION 0, padding
    ehdr = struct.pack(
        "<16sHHIQQQIHHHHHH",
        ident,
        2,  # e_type: ET_EXEC
        62,  # e_machine: EM_X86_64
        1,  # e_version: EV_CURRENT
        entry,  # e_entry: the first instruction, right after the headers
        _EHDR_SIZE,  # e_phoff: program headers follow the ELF header
        0,  # e_shoff: no section headers
        0,  # e_flags
        _EHDR_SIZE,  # e_ehsize
        _PHDR_SIZE,  # e_phentsize
        1,  # e_phnum
        0,  # e_shentsize (no section headers)
        0,  # e_shnum
        0,  # e_shstrndx: SHN_UNDEF
    )
    phdr = struct.pack(
        "<IIQQQQQQ",
        1,  # p_type: PT_LOAD
        4 | 1,  # p_flags: PF_R | PF_X
        0,  # p_offset: map the file from its start (headers included) ...
        LOAD_ADDRESS,  # p_vaddr: ... at LOAD_ADDRESS
        LOAD_ADDRESS,  # p_paddr (unused)
        size,  # p_filesz
        size,  # p_memsz: no bss
        0x1000,  # p_align: a page
    )
    assert len(ehdr) == _EHDR_SIZE and len(phdr) == _PHDR_SIZE
    return ehdr + phdr + code
