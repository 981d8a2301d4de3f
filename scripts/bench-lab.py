#!/usr/bin/env python3
"""The lab against its peers, in one run: writes docs/performance.md and docs/img/perf-*.svg.

Data path: q35 guests with their NVMe behind no IOMMU, iommulab stage 2,
iommulab nested, QEMU's intel-iommu and virtio-iommu (each strict and lazy),
and pseries stock vs iommulab stage 2 (pyctl.bench.dataplane), in interleaved
rounds; O_DIRECT read and write at 1 MiB and 4 KiB and random 4 KiB reads.
Instruction counts under callgrind: the core (scripts/bench-core.sh) and one
4 KiB edu DMA per configuration (pyctl.bench.dma; pseries through
scripts/bench-spapr.py).  Control path: the issue-12 scripts (QMP round trip,
pages/s, TCEs/s), run as subprocesses.  The machine's load is recorded before
and after every boot.  Nothing is asserted: the page says what was measured.

  .venv/bin/python scripts/bench-lab.py [--quick] [--rounds N] [--config NAME ...]
      [--size-1m 256M] [--size-4k 16M] [--reads 300] [--skip data,core,dma,control]
      [--json results/bench-lab.json] [--doc docs/performance.md] [--no-doc]
      [--stop-after MINUTES] [--from-json RESULTS.json]  (the page again from a run's JSON)
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests/device")]

from q35boot import stage1_identity  # noqa: E402

from pyctl.bench.dataplane import CONFIGS, Plan, run_boot  # noqa: E402
from pyctl.bench.dma import Q35_MODES, q35_dma_instructions  # noqa: E402
from pyctl.bench.report import data_table, render, summaries  # noqa: E402
from pyctl.bench.stats import loadavg, rotated  # noqa: E402
from pyctl.qemu.machines import qemu_build_dir  # noqa: E402

PY = str(REPO / ".venv/bin/python") if (REPO / ".venv/bin/python").exists() else sys.executable
FULL = Plan("64M", "8M", 100)
QUICK = Plan("32M", "4M", 40)
#: control-path scripts (other helpers' own), their arguments (full, quick)
CONTROL: tuple[tuple[str, list[str], list[str]], ...] = (
    (
        "bench-qmp.py",
        ["--calls", "2000", "--rounds", "3"],
        ["--calls", "300", "--rounds", "2", "--pages", "16384", "--no-ram"],
    ),
    # needs a QEMU build without the QMP input patch: run only with --unpatched-qemu
    ("bench-qmp-input.py", ["--rounds", "5"], ["--rounds", "2", "--calls", "50"]),
    (
        "bench-iommufd.py",
        ["--areas", "50000", "--ops", "1000", "--plain-ops", "5", "--qmp-pages", "16384"],
        ["--areas", "10000", "--ops", "200", "--plain-ops", "2", "--qmp-pages", "4096"],
    ),
    (
        "bench-spapr.py",
        ["--skip-nvme", "--calls", "1000", "--rounds", "3"],
        ["--skip-nvme", "--calls", "100", "--rounds", "1"],
    ),
)
FIGURE = re.compile(r"\d[\d,.]*\s*(?:[kKMG]?(?:pages|maps|pairs|TCEs|calls|ops)?/s|us|µs|ms)\b")
SECTIONS = ("data", "core", "dma", "control")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def qemu_version() -> str:
    out = subprocess.run(
        [str(qemu_build_dir() / "qemu-system-x86_64"), "--version"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else "?"


def data_path(
    plan: Plan,
    rounds: int,
    names: list[str],
    workdir: Path,
    data: dict[str, Any],
    out: Path,
    stop_at: float,
) -> list[dict[str, Any]]:
    """The boots, interleaved; ``data`` with the samples so far is saved to ``out`` after
    each (a run cut short keeps what it measured).  No boot starts after ``stop_at``
    (time.monotonic())."""
    by = {c.name: c for c in CONFIGS}
    samples: list[dict[str, Any]] = []
    data["samples"] = samples
    for rnd in range(rounds):
        for name in rotated(names, rnd):
            if time.monotonic() > stop_at:
                say(f"--stop-after reached: {len(samples)} boots ran")
                return samples
            before = loadavg()
            s = run_boot(by[name], plan, workdir / f"{name}-{rnd}", rnd + 1, stage1_identity)
            s.load_before, s.load_after = before, loadavg()
            m = {k: v for k, v in s.metrics.items() if v is not None}
            say(f"round {rnd} {name}: {s.error or m} (load {before[0]:.1f}->{s.load_after[0]:.1f})")
            samples.append(s.to_json())
            data["finished"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
            out.write_text(json.dumps(data, indent=1) + "\n")
    return samples


def core() -> dict[str, Any]:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts/bench-core.sh")], capture_output=True, text=True, check=False
    )
    counts = {}
    for m in re.finditer(r"^callgrind (\S+): (\d+) instructions per (.*)$", proc.stdout, re.M):
        counts[f"{m.group(1)} (per {m.group(3)})"] = int(m.group(2))
    out: dict[str, Any] = {"callgrind": counts, "output": proc.stdout}
    if proc.returncode:
        out["error"] = f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
    return out


def dma() -> dict[str, Any]:
    out: dict[str, Any] = {}
    x86 = qemu_build_dir() / "qemu-system-x86_64"
    names = {
        "none": "q35-none", "stage2": "q35-lab-s2", "nested": "q35-lab-nested",
        "intel": "q35-intel-iommu",
    }  # fmt: skip
    for mode in Q35_MODES:
        try:
            out[names[mode]] = q35_dma_instructions(x86, mode, stage1_identity)
        except Exception as exc:  # reported on the page, the run goes on
            out[names[mode]] = f"{type(exc).__name__}: {exc}"
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_spapr", REPO / "scripts/bench-spapr.py"
        )
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for stage2, name in ((False, "pseries-stock"), (True, "pseries-lab-s2")):
            out[name] = int(mod.callgrind_counts(stage2, 20, 20)["edu_dma_timer"])
    except Exception as exc:
        out["pseries-stock"] = out["pseries-lab-s2"] = f"{type(exc).__name__}: {exc}"
    return out


def control(quick: bool, unpatched: Path | None) -> list[dict[str, Any]]:
    runs = []
    for script, full_args, quick_args in CONTROL:
        args = quick_args if quick else full_args
        path = REPO / "scripts" / script
        run: dict[str, Any] = {"script": script, "args": args}
        runs.append(run)
        if not path.exists():
            run["error"] = "the script is not in this tree"
            continue
        if script == "bench-qmp-input.py":
            if unpatched is None:
                run["error"] = "needs a QEMU build without the QMP input patch (--unpatched-qemu)"
                continue
            args = run["args"] = ["--unpatched", str(unpatched), *args]
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                [PY, str(path), *args], capture_output=True, text=True, timeout=900, check=False
            )
        except subprocess.TimeoutExpired:
            run["error"] = "timed out after 900 s"
            continue
        run["seconds"] = time.monotonic() - t0
        run["output"] = proc.stdout
        if proc.returncode:
            run["error"] = f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
        run["figures"] = [ln.strip() for ln in proc.stdout.splitlines() if FIGURE.search(ln)]
        say(f"control {script}: {len(run['figures'])} figures ({run['seconds']:.0f} s)")
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few rounds, small sizes")
    ap.add_argument("--rounds", type=int, help="data-path rounds (default 3, quick 2)")
    ap.add_argument("--config", action="append", choices=[c.name for c in CONFIGS])
    ap.add_argument("--size-1m", help="nvme-rw size with 1 MiB blocks (overrides the plan)")
    ap.add_argument("--size-4k", help="nvme-rw size with 4 KiB blocks (overrides the plan)")
    ap.add_argument("--reads", type=int, help="random 4 KiB reads per boot (overrides the plan)")
    ap.add_argument("--skip", default="", help=f"comma-separated sections of {SECTIONS}")
    ap.add_argument("--json", type=Path, default=REPO / "results/bench-lab.json")
    ap.add_argument("--doc", type=Path, default=REPO / "docs/performance.md")
    ap.add_argument("--no-doc", action="store_true", help="only the JSON")
    ap.add_argument("--keep", type=Path, help="keep the boots' files (console logs) here")
    ap.add_argument(
        "--unpatched-qemu", type=Path, help="a build dir of QEMU without the QMP input patch"
    )
    ap.add_argument("--from-json", type=Path, help="render the page from an earlier run's JSON")
    ap.add_argument(
        "--stop-after", type=float, help="start no boot after this many minutes (a page anyway)"
    )
    args = ap.parse_args()
    if args.from_json:
        data = json.loads(args.from_json.read_text())
    else:
        skip = {s for s in args.skip.split(",") if s}
        if skip - set(SECTIONS):
            ap.error(f"--skip: unknown sections {sorted(skip - set(SECTIONS))} (known: {SECTIONS})")
        plan = QUICK if args.quick else FULL
        plan = Plan(
            args.size_1m or plan.size_1m,
            args.size_4k or plan.size_4k,
            args.reads if args.reads is not None else plan.random_reads,
        )
        rounds = args.rounds or (2 if args.quick else 3)
        names = args.config or [c.name for c in CONFIGS]
        data = {
            "command": " ".join(["scripts/bench-lab.py", *sys.argv[1:]]),
            "quick": args.quick,
            "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "host": {"cpus": os.cpu_count(), "uname": platform.platform(), "qemu": qemu_version()},
            "plan": plan.__dict__,
            "rounds": rounds,
            "load_start": loadavg(),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        stop_at = time.monotonic() + (args.stop_after * 60 if args.stop_after else float("inf"))
        # a SIGTERM unwinds (the guests are shut down; the JSON holds every finished boot)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

        def save() -> None:
            data["finished"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
            data["load_end"] = loadavg()
            args.json.write_text(json.dumps(data, indent=1) + "\n")

        # the load-independent parts first: a data path cut short (the JSON is saved after
        # every boot; --from-json draws the page from it) still has them
        if "core" not in skip:
            say("core (bench-core.sh)")
            data["core"] = core()
            save()
        if "dma" not in skip:
            say("one DMA per configuration under callgrind")
            data["dma"] = dma()
            save()
        if "control" not in skip:
            data["control"] = control(args.quick, args.unpatched_qemu)
            save()
        with tempfile.TemporaryDirectory(prefix="iommulab-bench-lab-") as tmp:
            if "data" not in skip:
                work = args.keep or Path(tmp)
                data_path(plan, rounds, names, work, data, args.json, stop_at)
        save()
        say(f"results: {args.json}")
    sums = summaries(data.get("samples", []))
    for machine in ("q35", "pseries"):
        print("\n".join(data_table(sums, machine)))
    if args.no_doc:
        return 0
    page, svgs = render(data)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(page)
    img = args.doc.parent / "img"
    img.mkdir(exist_ok=True)
    for name, svg in svgs.items():
        (img / name).write_text(svg)
    say(f"wrote {args.doc} and {len(svgs)} charts in {img}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
