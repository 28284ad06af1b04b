"""One argparse help format for every x2ct command line: the description as written, and
each option's default in its help (``--size N  detector size (default: 256)``)."""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout; appends ``(default: ...)`` to an option's help unless
    the help already speaks of its default or the default is None or False (nothing to
    say: the option is off or decided elsewhere, as the help says)."""

    def _format_action(self, action: argparse.Action) -> str:
        shown = self._default_text(action)
        if action.help is None and shown:  # an option without help: its default alone
            action.help = f"(default: {shown})"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = self._default_text(action)
        if not shown or "default" in text:
            return text
        return f"{text} (default: {shown})" if text else f"(default: {shown})"

    @staticmethod
    def _default_text(action: argparse.Action) -> str:
        default = action.default
        if any(default is v for v in (None, False, argparse.SUPPRESS)) or not action.option_strings:
            return ""
        if isinstance(default, (list, tuple)):
            default = " ".join(str(v) for v in default)
        return str(default).replace("%", "%%")
