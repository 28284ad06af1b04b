"""One clear line for every bad input: the error handling of x2ct's command lines.

``run_main(main)`` runs a script's ``main()``; a bad input (``ValueError`` and its
subclass ``InputError``, ``OSError``, ``MemoryError``) ends as one line on stderr,
``error: <message>``, and exit status 2 (what argparse uses for a bad command line),
never a traceback. MONAI wraps any error raised inside a transform in
``RuntimeError("applying transform ...")``; the error it wraps is reported instead.
Anything else is a bug and keeps its traceback. ``X2CT_DEBUG=1`` shows the traceback of
bad-input errors too.

    if __name__ == "__main__":
        run_main(main)
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

__all__ = ["EXIT_BAD_INPUT", "InputError", "input_error", "key_values", "one_line",
           "run_main"]

EXIT_BAD_INPUT = 2

_INPUT_ERRORS = (ValueError, OSError, MemoryError)


class InputError(ValueError):
    """A file or argument the user gave is not usable; the message names it and says what
    was expected."""


def key_values(items, flag: str) -> dict:
    """``KEY=VALUE`` command-line items as a dict, each VALUE read as JSON when it parses
    (numbers, lists, true) and kept as a bare string otherwise (``prediction_type=epsilon``);
    later items win. InputError names ``flag`` for an item without ``=``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def input_error(exc: BaseException) -> BaseException | None:
    """The bad-input error behind ``exc`` (``exc`` itself, or the error a MONAI transform
    wrapper or a chain of ``raise ... from`` carries), or None for a bug."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _INPUT_ERRORS):
            return exc
        if isinstance(exc, RuntimeError) and "applying transform" in str(exc):
            exc = exc.__cause__ or exc.__context__
            continue
        return None
    return None


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (newlines and runs of spaces collapsed)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError):
        text = f"out of memory ({text}); the input is larger than this machine can hold"
    elif isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return " ".join(text.split())


def run_main(main: Callable, argv=None) -> None:
    """Run ``main(argv)`` as a command line: exit 0 on success, 2 with one line
    ``error: ...`` on stderr for a bad input, 130 on Ctrl-C."""
    try:
        main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        cause = input_error(e)
        if cause is None or os.environ.get("X2CT_DEBUG"):
            raise
        print(f"error: {one_line(cause)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(0)
