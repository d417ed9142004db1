"""Where each key of a TOML file is written: its line, for messages a person can act on.

``tomllib`` returns values without positions, so :func:`key_lines` reads the (already valid)
text once more for its keys only: table headers, ``key = value`` lines, dotted keys, inline
tables and array items (``accept[1]`` on its own line of a long array). Values are skipped,
strings included (a multi-line string may hold lines that look like keys). :func:`line_of` finds
the line of a problem's path, or of the nearest enclosing key written in the file.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Mapping, Sequence

__all__ = ["key_lines", "line_of"]

Path = tuple[str | int, ...]
_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = {'"': '"', "\\": "\\", "b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r"}


def key_lines(text: str) -> dict[Path, int]:
    """The 1-based line of every key path written in ``text`` (its first mention)."""
    scanner = _Scanner(text)
    with contextlib.suppress(IndexError, ValueError):  # not TOML after all: what was found
        scanner.document()
    return scanner.lines


def line_of(path: Sequence[str | int], lines: Mapping[Path, int]) -> int | None:
    """The line of ``path``, else of its nearest enclosing key in the file; None if none is."""
    parts = tuple(path)
    while parts:
        if parts in lines:
            return lines[parts]
        parts = parts[:-1]
    return None


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[Path, int] = {}
        self._starts = [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]

    # -- positions ----------------------------------------------------------------------------

    def line(self) -> int:
        return bisect.bisect_right(self._starts, self.pos)

    def peek(self, ahead: int = 0) -> str:
        index = self.pos + ahead
        return self.text[index] if index < len(self.text) else ""

    def record(self, path: Path, line: int) -> None:
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], line)

    def skip_blank(self, *, newlines: bool) -> None:
        """Whitespace and comments (and line ends, where a value may continue past them)."""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t" or (newlines and char in "\r\n"):
                self.pos += 1
            elif char == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            raise ValueError(f"expected {token!r} at {self.pos}")
        self.pos += len(token)

    # -- statements ---------------------------------------------------------------------------

    def document(self) -> None:
        table: Path = ()
        while True:
            self.skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return
            line = self.line()
            if self.peek() == "[":
                double = self.peek(1) == "["
                self.pos += 2 if double else 1
                self.skip_blank(newlines=False)
                table = self.key()
                self.skip_blank(newlines=False)
                self.expect("]]" if double else "]")
                self.record(table, line)
            else:
                self.pair(table)

    def pair(self, table: Path) -> None:
        """``key = value``: the key's line, then the value (inner keys and items)."""
        line = self.line()
        path = (*table, *self.key())
        self.record(path, line)
        self.skip_blank(newlines=False)
        self.expect("=")
        self.skip_blank(newlines=False)
        self.value(path)

    def key(self) -> Path:
        """A dotted key (``a."b.c".d``) as its parts."""
        parts: list[str | int] = []
        while True:
            self.skip_blank(newlines=False)
            char = self.peek()
            if char == '"':
                parts.append(self.basic_string())
            elif char == "'":
                parts.append(self.literal_string())
            else:
                start = self.pos
                while self.peek() in _BARE and self.peek():
                    self.pos += 1
                if self.pos == start:
                    raise ValueError(f"no key at {start}")
                parts.append(self.text[start : self.pos])
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return tuple(parts)
            self.pos += 1

    # -- values -------------------------------------------------------------------------------

    def value(self, path: Path) -> None:
        char = self.peek()
        if char == "{":
            self.inline_table(path)
        elif char == "[":
            self.array(path)
        elif self.text.startswith('"""', self.pos) or self.text.startswith("'''", self.pos):
            self.multiline_string()
        elif char == '"':
            self.basic_string()
        elif char == "'":
            self.literal_string()
        else:  # a number, boolean or date: up to what ends a value
            while self.peek() and self.peek() not in ",]}\n#":
                self.pos += 1

    def inline_table(self, path: Path) -> None:
        self.expect("{")
        while True:
            self.skip_blank(newlines=False)
            if self.peek() == "}":
                self.pos += 1
                return
            self.pair(path)
            self.skip_blank(newlines=False)
            if self.peek() == ",":
                self.pos += 1

    def array(self, path: Path) -> None:
        """An array; each item's line is recorded under its index."""
        self.expect("[")
        index = 0
        while True:
            self.skip_blank(newlines=True)
            if self.peek() == "]":
                self.pos += 1
                return
            self.record((*path, index), self.line())
            self.value((*path, index))
            index += 1
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.pos += 1

    def multiline_string(self) -> None:
        quote = self.text[self.pos : self.pos + 3]
        end = self.pos + 3
        while True:
            end = self.text.index(quote, end)
            if quote == "'''" or not _escaped(self.text, end):
                break
            end += 1
        # A closing delimiter may be followed by up to two more quotes of the content.
        self.pos = end + 3
        while self.peek() == quote[0]:
            self.pos += 1

    def basic_string(self) -> str:
        self.expect('"')
        out: list[str] = []
        while True:
            char = self.text[self.pos]
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char != "\\":
                out.append(char)
                continue
            code = self.text[self.pos]
            self.pos += 1
            if code in _ESCAPES:
                out.append(_ESCAPES[code])
            elif code in "uU":
                width = 4 if code == "u" else 8
                out.append(chr(int(self.text[self.pos : self.pos + width], 16)))
                self.pos += width
            else:
                raise ValueError(f"bad escape at {self.pos}")

    def literal_string(self) -> str:
        self.expect("'")
        end = self.text.index("'", self.pos)
        value = self.text[self.pos : end]
        self.pos = end + 1
        return value


def _escaped(text: str, index: int) -> bool:
    """Whether the character at ``index`` follows an odd number of backslashes."""
    count = 0
    while index - count - 1 >= 0 and text[index - count - 1] == "\\":
        count += 1
    return count % 2 == 1
