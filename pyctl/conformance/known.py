"""Differences between the model and the lab's kernel that are documented, not bugs.

Each rule recognises one difference (docs/iommufd.md, "Conformance against
the kernel") in a call both sides refused, so neither changed anything and
the run can go on; it is counted and named in the run's statistics.  A
difference in what a call did, or one side refusing what the other did, is
never on this list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .protocol import Answer, Hello, Op, Src

U64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class Known:
    name: str
    reason: str
    applies: Callable[[Op, Answer, Answer, Hello, int], bool]


def _map_length_before_overflow(op: Op, k: Answer, m: Answer, hello: Hello, page: int) -> bool:
    if op.name != "m" or (k.errno, m.errno) != ("EINVAL", "EOVERFLOW"):
        return False
    src, length = op.args[3], op.args[4]
    assert isinstance(length, int)
    uva = hello.va(src) if isinstance(src, Src) else src
    return length > U64_MAX - page and uva + length > U64_MAX


KNOWN = (
    Known(
        "map-length-before-overflow",
        "IOAS_MAP with a length above SIZE_MAX - PAGE_SIZE whose user_va + length also "
        "overflows: Linux 6.12's iopt_alloc_pages() refuses the length first (EINVAL); from "
        "6.13 iopt_alloc_user_pages() checks the overflow first (EOVERFLOW), as the model does",
        _map_length_before_overflow,
    ),
)


def known_difference(op: Op, kernel: Answer, model: Answer, hello: Hello, page: int) -> str | None:
    """The name of the documented difference this is, or None."""
    if kernel.errno is None or model.errno is None:
        return None
    for k in KNOWN:
        if k.applies(op, kernel, model, hello, page):
            return k.name
    return None
