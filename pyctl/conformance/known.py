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

from .protocol import Answer, Hello, Op


@dataclass(frozen=True)
class Known:
    name: str
    reason: str
    applies: Callable[[Op, Answer, Answer, Hello, int], bool]


#: none on the lab kernel (Linux 6.19.11).  On 6.12 one was listed here,
#: map-length-before-overflow: IOAS_MAP with a length above SIZE_MAX - PAGE_SIZE
#: whose user_va + length also overflows was EINVAL there (iopt_alloc_pages()
#: checked the length first); 6.13+ answers EOVERFLOW, as the model does.
KNOWN: tuple[Known, ...] = ()


def known_difference(op: Op, kernel: Answer, model: Answer, hello: Hello, page: int) -> str | None:
    """The name of the documented difference this is, or None."""
    if kernel.errno is None or model.errno is None:
        return None
    for k in KNOWN:
        if k.applies(op, kernel, model, hello, page):
            return k.name
    return None
