"""``python -m x2ct.data.phantom``."""

from x2ct.cli import run_main
from x2ct.data.phantom.cli import main

run_main(main)
