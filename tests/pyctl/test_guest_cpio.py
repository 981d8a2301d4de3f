"""The newc cpio writer: byte layout, what the system cpio reads back, bad input."""

from __future__ import annotations

import gzip
import stat
import subprocess
from pathlib import Path

import pytest

from pyctl.guest import cpio


def read_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """An independent newc reader: (name, mode, data, rdev) per member, trailer excluded."""
    out = []
    pos = 0
    while True:
        assert pos % 4 == 0, "every header starts 4-byte aligned"
        assert data[pos : pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        assert data[pos + 110 + namesize - 1] == 0
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos : pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out.append((name, f[1], body, (f[9], f[10])))


def sample() -> cpio.Archive:
    arc = cpio.Archive()
    arc.add(cpio.directory("bin"))
    arc.add(cpio.directory("dev"))
    arc.add(cpio.chardev("dev/console", 5, 1))
    arc.add(cpio.regular("bin/busybox", b"\x7fELF" + bytes(range(256)) * 3, 0o755))
    arc.add(cpio.symlink("bin/sh", "busybox"))
    arc.add(cpio.regular("init", b"#!/bin/sh\necho hi\n", 0o755))
    arc.add(cpio.regular("empty", b""))
    return arc


def test_members_round_trip_with_types_modes_and_padding() -> None:
    members = read_newc(sample().to_bytes())
    names = [m[0] for m in members]
    assert names == ["bin", "dev", "dev/console", "bin/busybox", "bin/sh", "init", "empty"]
    by = {m[0]: m for m in members}
    assert stat.S_ISDIR(by["bin"][1])
    assert stat.S_ISCHR(by["dev/console"][1]) and by["dev/console"][3] == (5, 1)
    assert by["bin/busybox"][2] == b"\x7fELF" + bytes(range(256)) * 3
    assert stat.S_IMODE(by["bin/busybox"][1]) == 0o755
    assert stat.S_ISLNK(by["bin/sh"][1]) and by["bin/sh"][2] == b"busybox"
    assert by["empty"][2] == b""


def test_output_is_reproducible_and_gzip_wraps_the_same_bytes() -> None:
    a, b = sample(), sample()
    assert a.to_bytes() == b.to_bytes()
    assert a.to_gzip() == b.to_gzip()
    assert gzip.decompress(a.to_gzip()) == a.to_bytes()


def test_system_cpio_extracts_the_archive(tmp_path: Path) -> None:
    arc = cpio.Archive()
    arc.add(cpio.directory("bin"))
    arc.add(cpio.regular("bin/tool", b"payload\n" * 100, 0o750))
    arc.add(cpio.symlink("link", "bin/tool"))
    (tmp_path / "a.cpio").write_bytes(arc.to_bytes())
    out = tmp_path / "x"
    out.mkdir()
    with (tmp_path / "a.cpio").open("rb") as f:
        subprocess.run(["cpio", "-idm", "--quiet"], stdin=f, cwd=out, check=True)
    assert (out / "bin/tool").read_bytes() == b"payload\n" * 100
    assert stat.S_IMODE((out / "bin/tool").stat().st_mode) == 0o750
    assert (out / "link").is_symlink() and (out / "link").read_text() == "payload\n" * 100


@pytest.mark.parametrize("path", ["", "/abs", "a/../b", "nul\0x"])
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError):
        cpio.regular(path, b"")


def test_duplicates_missing_parents_and_data_on_directories_are_refused() -> None:
    arc = cpio.Archive()
    arc.add(cpio.directory("bin"))
    with pytest.raises(ValueError, match="twice"):
        arc.add(cpio.directory("bin"))
    with pytest.raises(ValueError, match="parent directory lib"):
        arc.add(cpio.regular("lib/x", b""))
    with pytest.raises(ValueError, match="only files and symlinks"):
        cpio.Entry("d", stat.S_IFDIR | 0o755, b"data")
    with pytest.raises(ValueError, match="unsupported file type"):
        cpio.Entry("fifo", stat.S_IFIFO | 0o644)
    assert [e.path for e in arc.entries] == ["bin"]
