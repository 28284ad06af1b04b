"""``python -m x2ct``: the ``x2ct`` command (x2ct/cli.py)."""

import sys

from x2ct.cli import main

if __name__ == "__main__":
    sys.exit(main())
