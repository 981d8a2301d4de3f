"""The wire protocol between pyctl and the guest's conformance runner.

One request per line, ``SEQ OP ARG...``, numbers in hex without ``0x``; one
answer per line, ``SEQ ok VALUE...`` or ``SEQ e ERRNO [VALUE...]`` (``bad
MESSAGE`` when the runner could not parse the request).  The runner prints
``hello VERSION PAGESIZE NBUF BUFSIZE BASE STRIDE`` when it starts: its map
source buffers sit at BASE + n * STRIDE (guest/conformance/iommufd-conformance.c).
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass

PROTO_VERSION = 1

#: operation -> argument count (None: variable, ALLOW_IOVAS)
OPS: dict[str, int | None] = {
    "S": 0,  # a new /dev/iommu context
    "P": 0,  # probe the mock device's facts on a context of its own
    "ia": 1,  # IOAS_ALLOC flags
    "d": 1,  # DESTROY id
    "m": 5,  # IOAS_MAP ioas flags iova src length
    "u": 3,  # IOAS_UNMAP ioas iova length
    "c": 6,  # IOAS_COPY dst flags dst_iova src src_iova length
    "r": 2,  # IOAS_IOVA_RANGES ioas num_iovas
    "a": None,  # IOAS_ALLOW_IOVAS ioas n start last ...
    "o": 4,  # OPTION option op object val64
    "h": 6,  # HWPT_ALLOC dev pt flags data_type data_len iotlb
    "md": 1,  # TEST_OP_MOCK_DOMAIN pt
    "mr": 2,  # TEST_OP_MOCK_DOMAIN_REPLACE stdev pt
    "gi": 1,  # GET_HW_INFO dev
}


class ProtocolError(Exception):
    """The runner's answer does not fit the protocol (or the runner refused a request)."""


@dataclass(frozen=True, slots=True)
class Src:
    """A map source: buffer ``buf`` of the runner's at offset ``off``."""

    buf: int
    off: int

    def encode(self) -> str:
        return f"b{self.buf:x}+{self.off:x}"


Arg = int | Src


@dataclass(frozen=True, slots=True)
class Op:
    name: str
    args: tuple[Arg, ...] = ()

    def __post_init__(self) -> None:
        if self.name not in OPS:
            raise ValueError(f"unknown operation {self.name!r}")
        want = OPS[self.name]
        if want is not None and len(self.args) != want:
            raise ValueError(f"{self.name} takes {want} arguments, not {len(self.args)}")

    def encode(self, seq: int) -> str:
        parts = [f"{seq:x}", self.name]
        for a in self.args:
            parts.append(a.encode() if isinstance(a, Src) else f"{a:x}")
        return " ".join(parts)

    def __str__(self) -> str:
        return " ".join(
            [self.name, *(a.encode() if isinstance(a, Src) else hex(a) for a in self.args)]
        )


@dataclass(frozen=True, slots=True)
class Answer:
    """One call's result: ``errno`` None for success, else the kernel's name
    (``"ENOENT"``); ``values`` what the call returns (or still reports with
    the error, e.g. the needed ``num_iovas`` with EMSGSIZE)."""

    errno: str | None
    values: tuple[int, ...] = ()

    def __str__(self) -> str:
        vals = " ".join(hex(v) for v in self.values)
        return f"{self.errno or 'ok'}{' ' + vals if vals else ''}"


#: where Python's errno table names a number by an alias the kernel does not use
_KERNEL_NAMES = {
    _errno.EOPNOTSUPP: "EOPNOTSUPP",
    _errno.EAGAIN: "EAGAIN",
    _errno.EDEADLK: "EDEADLK",
}


def errno_name(code: int) -> str:
    """The kernel's name of an errno number (the same on x86_64 and ppc64 for iommufd's)."""
    return _KERNEL_NAMES.get(code) or _errno.errorcode.get(code, f"E{code}")


def decode_answer(line: str, seq: int) -> Answer:
    parts = line.split()
    if len(parts) < 2:
        raise ProtocolError(f"short answer {line!r}")
    if parts[0] != f"{seq:x}":
        raise ProtocolError(f"answer {line!r} is not for request {seq:x}")
    try:
        if parts[1] == "ok":
            return Answer(None, tuple(int(p, 16) for p in parts[2:]))
        if parts[1] == "e":
            vals = tuple(int(p, 16) for p in parts[3:] if _is_hex(p))
            return Answer(errno_name(int(parts[2], 16)), vals)
    except (ValueError, IndexError) as exc:
        raise ProtocolError(f"bad answer {line!r}: {exc}") from exc
    raise ProtocolError(f"runner refused request {seq:x}: {' '.join(parts[1:])}")


def _is_hex(s: str) -> bool:
    try:
        int(s, 16)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    page_size: int
    nbuf: int
    buf_size: int
    base: int
    stride: int

    def va(self, src: Src) -> int:
        """The user address of a map source (what the model gets as ``phys``)."""
        return self.base + src.buf * self.stride + src.off


def decode_hello(line: str) -> Hello:
    parts = line.split()
    if len(parts) != 7 or parts[0] != "hello":
        raise ProtocolError(f"expected the runner's hello line, got {line!r}")
    h = Hello(*(int(p, 16) if i else int(p) for i, p in enumerate(parts[1:])))
    if h.version != PROTO_VERSION:
        raise ProtocolError(f"runner speaks protocol {h.version}, pyctl {PROTO_VERSION}")
    return h
