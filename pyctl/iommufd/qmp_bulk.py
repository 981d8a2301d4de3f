"""Bulk ranges of the lab's map and unmap commands (docs/qmp.md "Bulk payloads"): the
packed little-endian records and the chunked sending, for :class:`QmpBackend`.

A chunk goes as a JSON list (``inline``), as base64 of the packed records
(``base64``), or as the packed records in a sealed memfd passed with getfd
(``fd``).  On the fd path the next chunk is packed while QEMU maps the current
one (one command in flight: a second fd sent before QEMU took the first would
replace it in the monitor).
"""

from __future__ import annotations

import base64
import contextlib
import os
import sys
from array import array
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar, Union

from pyctl.qemu.qmp import ExecuteError, QmpSession, Submitted, memfd_from

from .backend import MapEntry
from .errors import BackendError

#: how bulk ranges travel: "auto" picks fd on a UNIX socket, else base64 (JSON for tiny ones)
Payload = Literal["auto", "fd", "base64", "inline"]
#: the getfd name of a payload fd (one at a time: each command closes it)
PAYLOAD_FD = "iommulab-payload"
#: mappings per command sent as JSON (QEMU's JSON parser caps tokens per message)
MAP_CHUNK = 8192
#: ranges per packed command: large enough that a command costs little, small enough that
#: packing the next chunk overlaps QEMU's work on this one (at most the device's max-batch)
PACKED_CHUNK = 1 << 16
#: batches this small go as JSON under "auto": an fd command (a memfd, getfd, the command:
#: two round trips) costs about what 16 mappings of JSON do (scripts/bench-qmp.py)
SMALL_BATCH = 16
#: a packed mapping's flags
READ, WRITE = 1, 2

T = TypeVar("T")
Words = Union[list[int], "array[int]"]


def pack(words: Words) -> memoryview:
    """Little-endian 64-bit words as bytes (no copy on a little-endian host)."""
    a = words if isinstance(words, array) else array("Q", words)
    if sys.byteorder != "little":
        a = array("Q", a)
        a.byteswap()
    return memoryview(a).cast("B")


def map_words(part: Sequence[MapEntry]) -> list[int]:
    """Packed mappings: iova, size, addr, flags."""
    out: list[int] = []
    for m in part:
        out += (m.iova, m.size, m.addr, m.read | m.write << 1)
    return out


def range_words(part: Sequence[tuple[int, int]]) -> list[int]:
    """Packed ranges: iova, size."""
    out: list[int] = []
    for iova, size in part:
        out += (iova, size)
    return out


def page_words(pages: range, iova: int, addr: int, page: int, flags: int) -> array[int]:
    """Packed mappings of pages ``pages`` (indexes) of a contiguous range, one page each:
    built by array slices, no Python object per page."""
    n = len(pages)
    first = pages.start if n else 0
    a = array("Q", bytes(32 * n))
    a[0::4] = array("Q", range(iova + first * page, iova + (first + n) * page, page))
    a[1::4] = array("Q", [page]) * n
    a[2::4] = array("Q", range(addr + first * page, addr + (first + n) * page, page))
    a[3::4] = array("Q", [flags]) * n
    return a


class BulkSender:
    """Send one command over many records in chunks, as ``mode`` says."""

    def __init__(
        self,
        session: QmpSession,
        execute: Callable[[str, dict[str, object]], Any],
        sent: Callable[[], None],
        timeout: float | None,
    ) -> None:
        self.session = session
        self.execute = execute  # a JSON command (counts, converts refusals)
        self.sent = sent  # count a command sent with an fd
        self.timeout = timeout

    def run(
        self,
        mode: Payload,
        command: str,
        args: dict[str, object],
        key: str,
        items: Sequence[T],
        step: int,
        words: Callable[[Sequence[T]], Words],
        to_json: Callable[[T], dict[str, object]],
        done: Callable[[Sequence[T], Any], None],
    ) -> None:
        """``command`` with ``args`` over ``items``, ``step`` a command; ``done`` gets each
        chunk and its answer (a refused chunk raises, later ones are not sent)."""
        if mode == "fd":
            self._fd(command, args, items, step, words, done)
            return
        for i in range(0, len(items), step):
            part = items[i : i + step]
            if mode == "inline":
                chunk = {**args, key: [to_json(x) for x in part]}
            else:
                chunk = {**args, "data": base64.b64encode(pack(words(part))).decode()}
            done(part, self.execute(command, chunk))

    def _fd(
        self,
        command: str,
        args: dict[str, object],
        items: Sequence[T],
        step: int,
        words: Callable[[Sequence[T]], Words],
        done: Callable[[Sequence[T], Any], None],
    ) -> None:
        args = {**args, "fd": PAYLOAD_FD}
        if len(items) <= step:  # one command: nothing to overlap, the synchronous path
            fd = memfd_from(pack(words(items)))
            try:
                self.sent()
                answer = self.session.execute_with_fd(
                    command, {**args, "count": len(items)}, fd, PAYLOAD_FD, self.timeout
                )
            except ExecuteError as e:
                raise BackendError(f"{command}: {e}") from e
            finally:
                os.close(fd)
            done(items, answer)
            return
        prev: tuple[Sequence[T], Submitted] | None = None
        try:
            for i in range(0, len(items), step):
                part = items[i : i + step]
                payload = pack(words(part))  # overlaps QEMU's work on prev
                if prev is not None:
                    (last, sub), prev = prev, None
                    done(last, self._finish(sub))
                fd = memfd_from(payload)
                try:
                    self.sent()
                    sub = self.session.submit_with_fd(
                        command, {**args, "count": len(part)}, fd, PAYLOAD_FD
                    )
                finally:
                    os.close(fd)  # QEMU has its own copy once sent
                prev = (part, sub)
            if prev is not None:
                (last, sub), prev = prev, None
                done(last, self._finish(sub))
        finally:
            if prev is not None:  # an error meanwhile: collect the answer, keep the error
                with contextlib.suppress(ExecuteError):
                    done(prev[0], self.session.finish(prev[1], self.timeout))

    def _finish(self, sub: Submitted) -> Any:
        try:
            return self.session.finish(sub, self.timeout)
        except ExecuteError as e:
            raise BackendError(f"{sub.command}: {e}") from e
