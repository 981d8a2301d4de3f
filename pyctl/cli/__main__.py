"""``python -m pyctl.cli``: the ``iommulab`` command."""

import sys

from pyctl.cli import main

sys.exit(main())
