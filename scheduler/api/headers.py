"""Response headers that can be sent as they are, on both runtimes (pure, but for a log line).

RFC 9110: a field name is a token; a value holds no control character but TAB. A CR or LF would
end the line and let what follows be read as a header of its own (response splitting).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping

__all__ = ["sendable"]

log = logging.getLogger(__name__)

_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")


def sendable(headers: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """``headers`` without any that could break the answer's header lines (or that latin-1,
    the header encoding, cannot carry). A route that lets such input into a header is a bug:
    the header is dropped and logged by name only (its value is the input), and the rest of
    the answer goes out."""
    for name, value in headers.items():
        if _FIELD_NAME.fullmatch(name) and _FIELD_VALUE.fullmatch(value) and _latin1(value):
            yield name, value
        else:
            log.error("response header %r dropped: not a valid field", name[:100])


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True
