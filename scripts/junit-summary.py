#!/usr/bin/env python3
"""Sum JUnit XML reports (meson, pytest, avocado) into one closing line.

Prints one row per report and, last, 'tests: N passed, N failed, N skipped'.
Exits 1 if anything failed or errored, 2 if no test ran at all.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def count(path: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped) for one JUnit file; errors count as failed."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
    passed = failed = skipped = 0
    for suite in suites:
        for case in suite.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed += 1
            elif case.find("skipped") is not None:
                skipped += 1
            else:
                passed += 1
    return passed, failed, skipped


def main(argv: list[str]) -> int:
    total = [0, 0, 0]
    for name in argv[1:]:
        path = Path(name)
        if not path.exists():
            print(f"  {name}: missing (suite did not run)")
            total[1] += 1
            continue
        p, f, s = count(path)
        print(f"  {path.name}: {p} passed, {f} failed, {s} skipped")
        total = [total[0] + p, total[1] + f, total[2] + s]
    print(f"tests: {total[0]} passed, {total[1]} failed, {total[2]} skipped")
    if total[1]:
        return 1
    return 0 if total[0] else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
