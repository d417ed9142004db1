"""A run's output on the operator's terminal: shown, never obeyed (``scheduler logs``,
``--follow``, the tail in ``show`` and ``try``)."""

from __future__ import annotations

import io

from scheduler.cli.logs import escape_controls, for_terminal


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_every_control_character_but_newline_and_tab_is_escaped() -> None:
    controls = [chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)] if chr(c) not in "\n\t"]
    escaped = escape_controls("".join(controls))
    assert escaped.isprintable() and escaped.isascii()
    assert escaped == "".join(f"\\x{ord(c):02x}" for c in controls)
    assert escape_controls("a\tb\nc \u00e9\u00a0\u2603") == "a\tb\nc \u00e9\u00a0\u2603"


def test_only_a_terminal_gets_the_escaped_text() -> None:
    osc52 = "copy \x1b]52;c;ZXZpbA==\x07 done\n"
    assert for_terminal(osc52, Terminal()) == "copy \\x1b]52;c;ZXZpbA==\\x07 done\n"
    assert for_terminal(osc52, io.StringIO()) == osc52  # a pipe or a file: unchanged
