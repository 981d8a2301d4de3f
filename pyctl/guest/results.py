"""The agent's side of the console: scenario specs for the kernel command line, result lines back.

The agent prints ``IOMMULAB-RESULT {json}`` per scenario and
``IOMMULAB-DONE {json}`` at the end (see guest/agent/init).  The
``wait-host`` scenario prints ``IOMMULAB-WAIT {"name": ...}`` and blocks until
the host answers on the host channel (:meth:`QemuInstance.tell_guest`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

RESULT_MARK = "IOMMULAB-RESULT"
DONE_MARK = "IOMMULAB-DONE"
KNOWN_SCENARIOS = (
    "boot", "nvme-probe", "nvme-rw", "nvme-randread", "dmesg-iommu", "wait-host", "mem-hotplug",
    "nvme-unbound", "nvme-rebind", "pci-unplug", "pci-plug", "iommufd-selftests",
)  # fmt: skip
WAIT_MARK = "IOMMULAB-WAIT"
_RESULT = re.compile(rf"^.*?{RESULT_MARK} (.*?)\s*$", re.MULTILINE)
_DONE = re.compile(rf"^.*?{DONE_MARK} (\{{.*\}})\s*$", re.MULTILINE)
DONE_PATTERN = rf"{DONE_MARK} \{{.*\}}\s*$"
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
BOOT_PATTERN = rf'{RESULT_MARK} \{{"scenario": "boot"'


def wait_pattern(name: str) -> str:
    """The console pattern of a ``wait-host:name=NAME`` scenario waiting for the host."""
    return rf'{WAIT_MARK} \{{"name": "{re.escape(name)}"\}}'


class ScenarioError(ValueError):
    """A scenario spec the agent could not be given."""


@dataclass(frozen=True)
class Scenario:
    name: str
    args: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for token in (self.name, *self.args, *self.args.values()):
            if not _TOKEN.match(token):
                raise ScenarioError(f"scenario token {token!r}: letters, digits and _.+- only")

    def spec(self) -> str:
        return ":".join([self.name, *(f"{k}={v}" for k, v in self.args.items())])


def cmdline_arg(scenarios: list[Scenario], check_known: bool = True) -> str:
    """``iommulab.run=...`` for the kernel command line.

    With ``check_known`` an unknown name is refused here; without, it is left
    for the agent to report (to test that path).
    """
    if not scenarios:
        raise ScenarioError("no scenarios given")
    if check_known:
        for s in scenarios:
            if s.name not in KNOWN_SCENARIOS:
                raise ScenarioError(
                    f"unknown scenario {s.name!r} (known: {', '.join(KNOWN_SCENARIOS)})"
                )
    return "iommulab.run=" + ",".join(s.spec() for s in scenarios)


# PowerNV's firmware (skiboot) logs to the console the guest writes to, with
# its own timestamp "[   15.245035974,4] " (nine decimals and a log level; the
# kernel's have six and none), possibly in the middle of an agent line.
_FIRMWARE_MSG = re.compile(r"\[ *\d+\.\d{9},\d\] [^\n]*\n?")


def agent_text(console: str) -> str:
    """The console without firmware messages, so that agent lines they cut are whole again."""
    return _FIRMWARE_MSG.sub("", console)


def parse_results(console: str) -> list[dict[str, Any]]:
    """Every result line on the console, in order.  A garbled line becomes a failed result."""
    out: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    for m in _RESULT.finditer(agent_text(console)):
        text = m.group(1)
        try:
            # Text after the JSON value (a kernel message sharing the line) is ignored.
            value, _ = decoder.raw_decode(text)
        except json.JSONDecodeError as exc:
            out.append(
                {"scenario": "?", "ok": False, "error": f"unparsable result ({exc}): {text[:200]}"}
            )
            continue
        if not isinstance(value, dict) or "scenario" not in value or "ok" not in value:
            out.append({"scenario": "?", "ok": False, "error": f"bad result: {text[:200]}"})
            continue
        out.append(value)
    return out


def parse_done(console: str) -> dict[str, Any] | None:
    m = _DONE.search(agent_text(console))
    if m is None:
        return None
    try:
        value = json.loads(m.group(1))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class DdwWindow:
    """A pseries DDW device-tree property: Linux's struct dynamic_dma_window_prop.

    Big-endian ``{u32 liobn; u64 dma_base; u32 tce_shift; u32 window_shift}``
    with C alignment: 4 bytes of padding after liobn, 24 bytes in all.
    """

    path: str
    liobn: int
    dma_base: int
    tce_shift: int
    window_shift: int

    @classmethod
    def from_hex(cls, path: str, hexstr: str) -> DdwWindow:
        raw = bytes.fromhex(hexstr)
        if len(raw) != 24:
            raise ValueError(f"{path}: {len(raw)} bytes, a DDW property has 24")
        return cls(
            path,
            int.from_bytes(raw[0:4], "big"),
            int.from_bytes(raw[8:16], "big"),
            int.from_bytes(raw[16:20], "big"),
            int.from_bytes(raw[20:24], "big"),
        )

    @property
    def size(self) -> int:
        return 1 << self.window_shift

    @property
    def direct(self) -> bool:
        """The kernel maps all of RAM 1:1 in this window (direct64) rather than dynamically."""
        return self.path.endswith("direct64-ddr-window-info")


@dataclass(frozen=True)
class DefaultWindow:
    """A pseries PHB's ``ibm,dma-window``: liobn, then bus offset and size (2 cells each)."""

    path: str
    liobn: int
    offset: int
    size: int

    @classmethod
    def from_hex(cls, path: str, hexstr: str) -> DefaultWindow:
        raw = bytes.fromhex(hexstr)
        if len(raw) != 20:
            raise ValueError(f"{path}: {len(raw)} bytes, ibm,dma-window with 2+2 cells has 20")
        return cls(
            path,
            int.from_bytes(raw[0:4], "big"),
            int.from_bytes(raw[4:12], "big"),
            int.from_bytes(raw[12:20], "big"),
        )
