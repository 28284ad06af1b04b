"""``python -m x2ct.data.phantom``."""

from x2ct.data.phantom.cli import main

main()
