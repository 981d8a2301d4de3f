"""Pinned Debian downloads (pyctl.debian) against a local HTTP mirror: only files
whose size and SHA-256 match the lock are kept."""

from __future__ import annotations

import hashlib
import http.server
import lzma
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from pyctl import debian


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(URL, root) of an HTTP server over tmp_path/mirror."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", root
    srv.shutdown()
    srv.server_close()


def put(root: Path, path: str, data: bytes) -> debian.Pin:
    f = root / path
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(data)
    return debian.Pin("p", "amd64", "1", len(data), hashlib.sha256(data).hexdigest(), path)


def test_fetch_keeps_a_matching_file_and_reuses_it(
    mirror: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = mirror
    pin = put(root, "pool/main/p/p/p_1_amd64.deb", b"package bytes")
    dest = tmp_path / "dl"
    got = debian.fetch(pin, dest, url)
    assert got == dest / "p_1_amd64.deb" and got.read_bytes() == b"package bytes"
    (root / pin.path).unlink()  # a second fetch must not need the mirror
    assert debian.fetch(pin, dest, url) == got


def test_fetch_discards_a_file_with_another_hash(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, root = mirror
    pin = put(root, "pool/main/p/p/p_1_amd64.deb", b"package bytes")
    (root / pin.path).write_bytes(b"package bytez")  # same size, other content
    dest = tmp_path / "dl"
    with pytest.raises(debian.DebianError, match="was discarded"):
        debian.fetch(pin, dest, url)
    assert list(dest.iterdir()) == []


def test_fetch_replaces_a_corrupt_cached_file(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, root = mirror
    pin = put(root, "pool/main/p/p/p_1_amd64.deb", b"package bytes")
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "p_1_amd64.deb").write_bytes(b"truncated")
    assert debian.fetch(pin, dest, url).read_bytes() == b"package bytes"


def test_missing_file_is_a_clear_error(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = mirror
    pin = debian.Pin("p", "amd64", "1", 1, "0" * 64, "pool/main/p/p/gone.deb")
    with pytest.raises(debian.DebianError, match=r"gone\.deb: HTTP 404"):
        debian.fetch(pin, tmp_path / "dl", url)
    assert list((tmp_path / "dl").iterdir()) == []


def dsc_text(files: dict[str, bytes]) -> str:
    lines = "".join(f" {hashlib.sha256(d).hexdigest()} {len(d)} {n}\n" for n, d in files.items())
    return f"Format: 3.0 (quilt)\nSource: q\nChecksums-Sha256:\n{lines}Files:\n x 1 y\n"


def test_source_fetch_checks_every_file_against_the_dsc(
    mirror: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = mirror
    files = {"q_1.orig.tar.xz": b"upstream", "q_1-1.debian.tar.xz": b"debian dir"}
    for name, data in files.items():
        put(root, f"pool/main/q/q/{name}", data)
    dsc = put(root, "pool/main/q/q/q_1-1.dsc", dsc_text(files).encode())
    src = debian.Pin("q", "source", "1-1", dsc.size, dsc.sha256, dsc.path)
    dest = tmp_path / "dl"
    assert debian.fetch(src, dest, url) == dest / "q_1-1.dsc"
    assert (dest / "q_1.orig.tar.xz").read_bytes() == b"upstream"
    (root / "pool/main/q/q/q_1-1.debian.tar.xz").write_bytes(b"tampered!!")
    (dest / "q_1-1.debian.tar.xz").unlink()
    with pytest.raises(debian.DebianError, match=r"q_1-1\.debian\.tar\.xz: got 10 bytes"):
        debian.fetch(src, dest, url)


def test_dsc_naming_a_path_is_refused() -> None:
    with pytest.raises(debian.DebianError, match="with a path"):
        debian.dsc_files(dsc_text({"../../etc/passwd": b"x"}))
    with pytest.raises(debian.DebianError, match="no Checksums-Sha256"):
        debian.dsc_files("Source: q\n")


def test_lock_round_trip_and_bad_lines() -> None:
    pin = debian.Pin(
        "a", "ppc64el", "1:2-3", 5, "ab" * 32, "pool/main/a/a/a_2-3_ppc64el.deb", False
    )
    assert debian.parse_lock("# header\n" + pin.line() + "\n") == [pin]
    with pytest.raises(debian.DebianError, match="lock:1: expected"):
        debian.parse_lock("a b c\n", "lock")
    with pytest.raises(debian.DebianError, match="bad size or sha256"):
        debian.parse_lock(f"a amd64 1 five {'ab' * 32} pool/x\n")
    with pytest.raises(debian.DebianError, match="not pinned"):
        debian.find_pin([pin], "a", "amd64", "1:2-3")


PACKAGES = """\
Package: busybox-static
Version: 1:1.37.0-6+b9
Architecture: ppc64el
Filename: pool/main/b/busybox/busybox-static_1.37.0-6+b9_ppc64el.deb
Size: 988788
SHA256: {sha}
Description: static busybox
 second line

Package: busybox-static
Version: 1:1.36.1-9
Architecture: ppc64el
Filename: pool/main/b/busybox/busybox-static_1.36.1-9_ppc64el.deb
Size: 1
SHA256: 00
"""


def test_make_pins_refuses_an_index_that_does_not_match_inrelease(
    mirror: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, root = mirror
    text = PACKAGES.format(sha="cd" * 32)
    index = lzma.compress(text.encode())
    put(root, "dists/trixie/main/binary-ppc64el/Packages.xz", index)
    good = (len(index), hashlib.sha256(index).hexdigest())
    want = [("busybox-static", "ppc64el", "1:1.37.0-6+b9", "trixie")]

    monkeypatch.setattr(debian, "signed_release", lambda m, s: {
        "main/binary-ppc64el/Packages.xz": good})  # fmt: skip
    (pin,) = debian.make_pins(want, url)
    assert (pin.size, pin.sha256, pin.verified) == (988788, "cd" * 32, True)
    assert pin.path.endswith("busybox-static_1.37.0-6+b9_ppc64el.deb")

    # the mirror's Release names another file than the one it serves
    monkeypatch.setattr(debian, "signed_release", lambda m, s: {
        "main/binary-ppc64el/Packages.xz": (good[0] + 1, good[1])})  # fmt: skip
    with pytest.raises(debian.DebianError, match="--trust-unverified ppc64el"):
        debian.make_pins(want, url)
    (pin,) = debian.make_pins(want, url, trust_unverified=["ppc64el"])
    assert not pin.verified and pin.line().endswith(" unverified")

    with pytest.raises(debian.DebianError, match="is not in trixie"):
        debian.make_pins([("busybox-static", "ppc64el", "9", "trixie")], url, ["ppc64el"])


SOURCES = """\
Package: linux
Version: 6.19.11-1~bpo13+1
Directory: pool/main/l/linux
Checksums-Sha256:
 {dsc} 290000 linux_6.19.11-1~bpo13+1.dsc
 {orig} 159228696 linux_6.19.11.orig.tar.xz
 {deb} 1900000 linux_6.19.11-1~bpo13+1.debian.tar.xz

Package: linux-signed-amd64
Version: 6.19.11+1~bpo13+1
Directory: pool/main/l/linux-signed-amd64
Checksums-Sha256:
 {dsc} 1 linux_6.19.11.orig.tar.xz
"""


def test_an_orig_tarball_is_pinned_from_its_suites_signed_sources(
    mirror: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lab kernels' source: the upstream tarball alone, from the Sources index of
    the suite versions.env names (trixie-backports), next to trixie's pins."""
    url, root = mirror
    text = SOURCES.format(dsc="11" * 32, orig="22" * 32, deb="33" * 32)
    index = lzma.compress(text.encode())
    put(root, "dists/trixie-backports/main/source/Sources.xz", index)
    good = (len(index), hashlib.sha256(index).hexdigest())
    asked: list[str] = []

    def release(m: str, suite: str) -> dict[str, tuple[int, str]]:
        asked.append(suite)
        return {"main/source/Sources.xz": good if suite == "trixie-backports" else (0, "")}

    monkeypatch.setattr(debian, "signed_release", release)
    (pin,) = debian.make_pins([("linux", debian.ORIG, "6.19.11", "trixie-backports")], url)
    assert asked == ["trixie-backports"]
    assert pin == debian.Pin(
        "linux", "orig", "6.19.11", 159228696, "22" * 32,
        "pool/main/l/linux/linux_6.19.11.orig.tar.xz",
    )  # fmt: skip
    assert debian.parse_lock(pin.line()) == [pin]
    with pytest.raises(debian.DebianError, match=r"linux 6.19.10 \(orig\) is not in"):
        debian.make_pins([("linux", debian.ORIG, "6.19.10", "trixie-backports")], url)

    versions = debian.read_versions()
    want = debian.wanted(versions)
    orig = [w for w in want if w[1] == debian.ORIG]
    assert orig == [("linux", "orig", versions["LINUX_ORIG_VERSION"], "trixie-backports")]
    libcap = [w for w in want if w[0] == "libcap-dev"]
    assert {w[1] for w in libcap} == {"amd64", "ppc64el"}
    assert {w[3] for w in libcap} == {versions["LIBCAP_DEV_SUITE"]}
    assert all(w[3] == debian.SUITE for w in want if w not in orig + libcap)
