"""A writer for the "newc" cpio format the Linux initramfs unpacker reads.

Entries are written in the order given, with inode numbers counted from 1,
uid/gid 0 and mtime 0, so the same input gives the same bytes.
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass, field

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_MAX_FIELD = 0xFFFFFFFF


@dataclass(frozen=True)
class Entry:
    """One archive member. ``mode`` includes the file type bits."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if not self.path or self.path.startswith("/") or "\0" in self.path:
            raise ValueError(f"cpio: bad member path {self.path!r} (relative, no NUL)")
        if ".." in self.path.split("/"):
            raise ValueError(f"cpio: member path {self.path!r} must not contain '..'")
        kind = stat.S_IFMT(self.mode)
        if kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK):
            raise ValueError(f"cpio: {self.path}: unsupported file type {oct(kind)}")
        if kind in (stat.S_IFDIR, stat.S_IFCHR, stat.S_IFBLK) and self.data:
            raise ValueError(f"cpio: {self.path}: only files and symlinks carry data")
        if len(self.data) > _MAX_FIELD:
            raise ValueError(f"cpio: {self.path}: {len(self.data)} bytes exceed the newc limit")


def directory(path: str, perm: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFDIR | perm)


def regular(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | perm, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def chardev(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(
    ino: int, entry_mode: int, nlink: int, size: int, rdev: tuple[int, int], namesize: int
) -> bytes:
    fields = (ino, entry_mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)


@dataclass
class Archive:
    """An ordered set of entries; a parent directory must come before its children."""

    entries: list[Entry] = field(default_factory=list)

    def add(self, entry: Entry) -> None:
        known = {e.path for e in self.entries}
        if entry.path in known:
            raise ValueError(f"cpio: {entry.path} added twice")
        parent = entry.path.rpartition("/")[0]
        if parent and parent not in known:
            raise ValueError(f"cpio: {entry.path}: parent directory {parent} not added before")
        self.entries.append(entry)

    def to_bytes(self) -> bytes:
        out = bytearray()
        for ino, entry in enumerate(self.entries, start=1):
            name = entry.path.encode() + b"\0"
            nlink = 2 if stat.S_ISDIR(entry.mode) else 1
            out += _header(ino, entry.mode, nlink, len(entry.data), entry.rdev, len(name))
            out += name + _pad4(110 + len(name))
            out += entry.data + _pad4(len(entry.data))
        name = TRAILER.encode() + b"\0"
        out += _header(0, 0, 1, 0, (0, 0), len(name)) + name + _pad4(110 + len(name))
        return bytes(out)

    def to_gzip(self) -> bytes:
        """The archive gzip-compressed (mtime 0, so reproducible)."""
        return gzip.compress(self.to_bytes(), compresslevel=6, mtime=0)
