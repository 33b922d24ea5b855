"""Initramfs archives (newc cpio, as the kernel unpacks them), and the KVM probe's.

The probe's initramfs holds one /init: a 176-byte static x86-64 ELF written here (no
compiler, no busybox on the node) that writes a marker line to its console and exits;
init exiting panics the kernel, which with `panic=-1` reboots, and QEMU's `-no-reboot`
turns that into QEMU exiting. Seeing the marker on the serial port proves a Linux kernel
booted to userspace under the accelerator probed. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

CHAR_DEV = 0o020000
ELF_BASE = 0x400000


def newc(files: dict[str, tuple[bytes, int]],
         devices: dict[str, tuple[int, int, int]] | None = None) -> bytes:
    """A newc cpio archive of regular files (name -> (data, mode)) and character devices
    (name -> (mode, major, minor)), their parent directories added."""
    devices = devices or {}
    names = [*files, *devices]
    dirs = sorted({str(p) for n in names for p in Path(n).parents if str(p) != "."})
    entries = [(d, b"", 0o040755, 0, 0) for d in dirs]
    entries += [(n, data, 0o100000 | mode, 0, 0) for n, (data, mode) in sorted(files.items())]
    entries += [(n, b"", CHAR_DEV | mode, ma, mi) for n, (mode, ma, mi) in sorted(devices.items())]
    out = io.BytesIO()
    for ino, (name, data, mode, major, minor) in enumerate(
            [*entries, ("TRAILER!!!", b"", 0, 0, 0)], 1):
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(raw), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + raw)
        out.write(b"\0" * (-(110 + len(raw)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
    return out.getvalue()


def marker_init(message: bytes) -> bytes:
    """A static x86-64 Linux ELF: write(1, message), exit(0). One PT_LOAD segment."""
    start = 64 + 56  # ELF header, one program header
    code = (b"\xb8\x01\x00\x00\x00"  # mov eax, 1 (write)
            b"\xbf\x01\x00\x00\x00"  # mov edi, 1 (stdout: the console)
            b"\x48\x8d\x35" + struct.pack("<i", 16)  # lea rsi, [rip+16]: the message
            + b"\xba" + struct.pack("<I", len(message))  # mov edx, len
            + b"\x0f\x05"  # syscall
            b"\xb8\x3c\x00\x00\x00"  # mov eax, 60 (exit)
            b"\x31\xff"  # xor edi, edi
            b"\x0f\x05")  # syscall
    size = start + len(code) + len(message)
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + b"\0" * 9, 2, 0x3E,
                         1, ELF_BASE + start, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, ELF_BASE, ELF_BASE, size, size, 0x1000)
    return header + segment + code + message


def probe_initramfs(marker: str) -> bytes:
    """/init printing `marker` on its own line, and /dev/console for it to print to."""
    return newc({"init": (marker_init(f"\n{marker}\n".encode()), 0o755)},
                {"dev/console": (0o600, 5, 1)})
