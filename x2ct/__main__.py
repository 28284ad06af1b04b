"""``python -m x2ct``: the ``x2ct`` command (x2ct/command.py)."""

import sys

from x2ct.command import main

if __name__ == "__main__":
    sys.exit(main())
