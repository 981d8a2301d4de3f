"""``python -m pyctl.guest build ARCH...``: build the guest images, print their manifest."""

from __future__ import annotations

import argparse
import json
import sys

from pyctl.guest import GuestBuildError
from pyctl.guest.arches import ARCHES
from pyctl.guest.image import ARCH_MODULES, DEFAULT_MODULES, KERNEL_ENV, KERNELS, build_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyctl.guest")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or reuse) guest images")
    b.add_argument("arch", nargs="+", choices=[*ARCHES, "all"])
    b.add_argument(
        "--module",
        action="append",
        default=None,
        help=f"modules to include (default: {' '.join(DEFAULT_MODULES)}, after the "
        f"architecture's own: {ARCH_MODULES})",
    )
    b.add_argument(
        "--kernel",
        choices=KERNELS,
        default=None,
        help=f"guest kernel flavour (default: ${KERNEL_ENV}, else {KERNELS[0]}); lab builds "
        "the lab kernel first if needed (scripts/build-kernel.sh)",
    )
    args = parser.parse_args(argv)
    arches = list(ARCHES) if "all" in args.arch else args.arch
    modules = tuple(args.module) if args.module else None
    out = {}
    try:
        for arch in arches:
            out[arch] = build_image(arch, modules, log=True, kernel=args.kernel).to_json()
    except GuestBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
