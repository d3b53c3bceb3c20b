"""The macro grammar of cluster config strings, parsed without evaluating anything.

Templates are checked with it when an admin saves them, so a malformed ``%...%`` is caught at save time
instead of when a user launches a cluster; the expander in ``clusters.planning.macros`` evaluates the parsed
references per node. Pure Python, no Django.

Grammar (text between two ``%``; ``%%`` is a literal ``%``)::

    macro   := 'join(' inner ',' literal ')' | inner
    inner   := 'map(' basic ',' literal ')' | basic
    basic   := name [ '[' digits ']' ]
    literal := '...' | "..."
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_NAME_CHARS = re.compile(r"[A-Za-z0-9_.\-]")


class MacroSyntaxError(ValueError):
    """A macro that cannot be parsed; ``position`` is the offset in the whole string."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


@dataclass(frozen=True)
class MacroRef:
    """One parsed macro.

    ``kind`` is ``cluster.owner``, ``host``, ``ip``, ``num`` or ``instance``; ``service`` None means the
    node itself (``self``); ``ip_type`` None means ``bind_v4``.
    """

    text: str
    start: int
    end: int
    kind: str
    service: str | None = None
    ip_type: str | None = None
    index: int | None = None
    map_format: str | None = None
    join_separator: str | None = None


def _interpret_name(name: str, position: int) -> dict[str, Any]:
    """Turn a dotted macro name into its parts, or raise naming the macro."""
    parts = name.split(".")
    head = parts[0]
    if name == "cluster.owner":
        return {"kind": "cluster.owner"}
    if head in {"host", "num"} and len(parts) >= 2:
        if head == "host" and parts[1:] == ["self"]:
            return {"kind": "host"}
        if parts[1] == "service":
            service = ".".join(parts[2:])
            if not service:
                raise MacroSyntaxError("macro is missing a service name", position)
            return {"kind": head, "service": service}
    if head == "instance" and parts[1:3] == ["self", "service"]:
        service = ".".join(parts[3:])
        if not service:
            raise MacroSyntaxError("macro is missing a service name", position)
        return {"kind": "instance", "service": service}
    if head == "ip" and len(parts) >= 2:
        rest = parts[1:]
        ip_type = None
        if rest[0] not in {"self", "service"}:
            ip_type, rest = rest[0], rest[1:]
        if rest == ["self"]:
            return {"kind": "ip", "ip_type": ip_type}
        if rest and rest[0] == "service":
            service = ".".join(rest[1:])
            if not service:
                raise MacroSyntaxError("macro is missing a service name", position)
            return {"kind": "ip", "ip_type": ip_type, "service": service}
    raise MacroSyntaxError(f"'{name}' is not a valid macro name", position)


class _Parser:
    def __init__(self, text: str, pos: int) -> None:
        self.text = text
        self.pos = pos

    def peek_word(self, word: str) -> bool:
        return self.text.startswith(word, self.pos)

    def expect(self, char: str) -> None:
        if self.pos >= len(self.text) or self.text[self.pos] != char:
            raise MacroSyntaxError(f"'{char}' expected at position {self.pos}", self.pos)
        self.pos += 1

    def literal(self) -> str:
        if self.pos >= len(self.text) or self.text[self.pos] not in "'\"":
            raise MacroSyntaxError(f"Expected ' or \" at position {self.pos}", self.pos)
        quote = self.text[self.pos]
        end = self.text.find(quote, self.pos + 1)
        if end < 0:
            raise MacroSyntaxError(f"unterminated literal starting at position {self.pos}", self.pos)
        value = self.text[self.pos + 1 : end]
        self.pos = end + 1
        return value

    def basic(self) -> dict[str, Any]:
        start = self.pos
        while self.pos < len(self.text) and _NAME_CHARS.match(self.text[self.pos]):
            self.pos += 1
        name = self.text[start : self.pos]
        if not name:
            raise MacroSyntaxError("A macro name must not be empty.", start)
        parts = _interpret_name(name, start)
        if self.pos < len(self.text) and self.text[self.pos] == "[":
            self.pos += 1
            digits_start = self.pos
            while self.pos < len(self.text) and self.text[self.pos].isdigit():
                self.pos += 1
            if self.pos == digits_start:
                if self.pos < len(self.text) and self.text[self.pos] == "]":
                    raise MacroSyntaxError("No service number seen.", self.pos)
                raise MacroSyntaxError("A service number must consist of digits only.", self.pos)
            if self.pos >= len(self.text) or self.text[self.pos] != "]":
                raise MacroSyntaxError("No ending bracket ']' seen.", self.pos)
            parts["index"] = int(self.text[digits_start : self.pos])
            self.pos += 1
            if parts.get("service") is None:
                raise MacroSyntaxError(f"'{name}' takes no index", start)
        return parts

    def inner(self) -> dict[str, Any]:
        if self.peek_word("map("):
            self.pos += 4
            parts = self.basic()
            self.expect(",")
            parts["map_format"] = self.literal()
            self.expect(")")
            return parts
        return self.basic()

    def macro(self) -> dict[str, Any]:
        if self.peek_word("join("):
            self.pos += 5
            parts = self.inner()
            self.expect(",")
            parts["join_separator"] = self.literal()
            self.expect(")")
            return parts
        return self.inner()


def iter_macros(text: str) -> Iterator[MacroRef | str]:
    """Yield literal chunks and parsed macros of ``text`` in order; ``%%`` yields a literal ``%``."""
    pos = 0
    chunk_start = 0
    length = len(text)
    while pos < length:
        if text[pos] != "%":
            pos += 1
            continue
        if pos + 1 < length and text[pos + 1] == "%":
            yield text[chunk_start:pos] + "%"
            pos += 2
            chunk_start = pos
            continue
        if text.find("%", pos + 1) < 0:
            break  # a lone '%' with no closing one is plain text, as in the original
        if chunk_start < pos:
            yield text[chunk_start:pos]
        parser = _Parser(text, pos + 1)
        parts = parser.macro()
        if parser.pos >= length:
            raise MacroSyntaxError(f"unterminated macro starting at position {pos}", pos)
        if text[parser.pos] != "%":
            raise MacroSyntaxError(f"Extra characters after macro at position {parser.pos}", parser.pos)
        end = parser.pos + 1
        yield MacroRef(text=text[pos:end], start=pos, end=end, **parts)
        pos = chunk_start = end
    if chunk_start < length:
        yield text[chunk_start:]


def parse_macros(text: str) -> list[MacroRef]:
    """All macros in ``text``; raises MacroSyntaxError on the first malformed one."""
    return [item for item in iter_macros(text) if isinstance(item, MacroRef)]


def json_strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string value inside a JSON document with its JSON-pointer path (keys are not expanded)."""
    if isinstance(value, str):
        yield path or "/", value
    elif isinstance(value, dict):
        for key, item in value.items():
            escaped = str(key).replace("~", "~0").replace("/", "~1")
            yield from json_strings(item, f"{path}/{escaped}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from json_strings(item, f"{path}/{index}")


def macro_errors(value: Any, base_path: str) -> list[tuple[str, str]]:
    """(path, message) for every malformed macro in a JSON document."""
    problems = []
    for path, text in json_strings(value):
        if "%" not in text:
            continue
        try:
            parse_macros(text)
        except MacroSyntaxError as error:
            problems.append((f"{base_path}{path if path != '/' else ''}", f"bad macro in {text!r}: {error.message}"))
    return problems
