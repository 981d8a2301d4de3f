"""Boot a guest image with the agent, run scenarios, collect the results.

A run ends when the agent prints its DONE line (QEMU then exits by itself on
power-off, or is shut down), when QEMU dies, the guest panics, or the
timeout passes; in every case the console log is kept and returned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pyctl.guest.image import GuestImage
from pyctl.guest.results import (
    BOOT_PATTERN,
    DONE_PATTERN,
    Scenario,
    cmdline_arg,
    parse_done,
    parse_results,
)
from pyctl.qemu.launcher import FATAL_PATTERNS, LaunchError, QemuInstance
from pyctl.qemu.machines import GuestConfig, NvmeDisk
from pyctl.qemu.qmp import QmpSession


@dataclass
class AgentRun:
    results: list[dict[str, Any]]
    done: dict[str, Any] | None
    console: Path
    seconds_to_boot: float | None  # QEMU start -> the agent's first ("boot") result
    seconds_to_done: float | None
    error: str | None  # why the run failed (timeout, panic, QEMU exit), None if it finished
    exit_status: int | None
    inspected: Any = None  # what run_agent's ``inspect`` returned

    @property
    def ok(self) -> bool:
        return self.error is None and all(r.get("ok") is True for r in self.results)

    def result(self, scenario: str) -> dict[str, Any]:
        for r in self.results:
            if r.get("scenario") == scenario:
                return r
        raise KeyError(f"no result for scenario {scenario!r} (console log: {self.console})")


def guest_config(
    machine: str,
    image: GuestImage,
    scenarios: list[Scenario],
    nvme: NvmeDisk | None = None,
    check_known: bool = True,
    append: str = "",
    **kwargs: Any,
) -> GuestConfig:
    line = " ".join(x for x in (cmdline_arg(scenarios, check_known), append) if x)
    return GuestConfig(
        machine=machine, kernel=image.kernel, initrd=image.initrd, append=line, nvme=nvme, **kwargs
    )


def run_agent(
    cfg: GuestConfig,
    workdir: Path,
    timeout: float = 180.0,
    build_dir: Path | None = None,
    poweroff_timeout: float = 15.0,
    inspect: Callable[[QmpSession], Any] | None = None,
    fatal: tuple[str, ...] = FATAL_PATTERNS,
) -> AgentRun:
    """Boot ``cfg`` (whose command line names the scenarios) and wait for the agent.

    ``inspect(qmp)``, if given, runs once the agent is DONE, with the guest's last
    state still in QEMU (its power-off pauses QEMU instead of ending it); what it
    returns is the run's ``inspected``.  ``fatal``: console patterns that end the run at
    once (the guest will produce no more results).
    """
    if inspect is not None:
        cfg = replace(cfg, extra_args=(*cfg.extra_args, "-action", "shutdown=pause"))
    inst = QemuInstance(cfg, workdir, build_dir)
    error: str | None = None
    seconds: float | None = None
    boot: float | None = None
    inspected: Any = None
    try:
        inst.start()
        if cfg.paused:
            inst.qmp.cmd("cont")
        inst.wait_for(BOOT_PATTERN, timeout, fatal)
        boot = inst.elapsed()
        inst.wait_for(DONE_PATTERN, max(1.0, timeout - boot), fatal)
        seconds = inst.elapsed()
        if inspect is not None:
            inspected = inspect(inst.qmp)
        else:
            # The agent powers off; wait for QEMU to exit on its own before forcing it.
            inst.wait_exit(poweroff_timeout)
    except LaunchError as exc:
        error = str(exc)
    finally:
        status = inst.shutdown()
    text = inst.console_text()
    return AgentRun(
        parse_results(text), parse_done(text), inst.console_path, boot, seconds, error, status,
        inspected,
    )  # fmt: skip
