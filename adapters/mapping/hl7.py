"""HL7 v2 replies: field paths, a tiny success-rule language, list items, and value escaping for templates.

Messages are parsed with python-hl7 (``hl7.parse``) after :mod:`adapters.hl7_codec` has decoded them; values
are read with our own traversal and unescaping, because python-hl7's ``unescape`` turns ``\\Xhh\\`` into one
character per byte (wrong for GB18030 and UTF-8) and its ``escape`` writes every non-ASCII character as a hex
escape, which no Chinese HIS expects.

**Paths** (``fields``, ``error_code``, ``error_message``)::

    SEG[occurrence]-FIELD[repetition].COMPONENT.SUBCOMPONENT

``MSA-1``, ``PID-5.1``, ``PID-3[2].1`` (second repetition of PID-3), ``FT1[2]-7`` (PID-7 of the second FT1
segment), ``FT1-11.1.1``. Every index starts at 1 and defaults to 1; fields are numbered as in the standard,
so ``MSH-9`` is the message type and ``MSH-1`` the field separator. A path that stops early reads the first
component (``PID-5`` is ``PID-5.1.1``). Text is unescaped and stripped; empty or absent reads as no value.
``A or B`` reads the first of several paths that has a value (``MSA-6.1 or QAK-2``). A bare segment name
(``ZTC``) reads the whole segment and is how lists select their items.

**Lists**: ``xpath = "ZBL"`` gives one item per ZBL segment; an item holds its segment and the segments after
it up to the next ZBL (an HL7 segment group), and item paths name them as usual (``ZBL-3``).

**Rules** (``success``)::

    PATH = VALUE    PATH != VALUE    PATH in V1,V2    PATH not in V1,V2    PATH (has a value)    not PATH

joined with ``and`` / ``or`` (``and`` binds tighter, no parentheses): ``MSA-1 in AA,CA``,
``MSA-1 = AA and QAK-2 = OK``. Values are compared as text, case-sensitively; quote a value holding spaces or
commas with ``'…'`` or ``"…"``; ``PATH = ''`` holds when the path has no value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hl7
import hl7.exceptions

from adapters.hl7_codec import CharsetError, UndecodableMessage, codec_for, declared_charset, decode, normalize
from adapters.mapping.errors import MappingError

DEFAULT_ENCODING = "GB18030"

_ESCAPES = str.maketrans(
    {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\", "\r": "\\X0D\\", "\n": "\\X0A\\"}
)


def escape(value: str) -> str:
    """Escape a value for a template with the default encoding characters ``|^~\\&``.

    Separators become ``\\F\\ \\S\\ \\T\\ \\R\\``, the escape character ``\\E\\``, and a line break the hex escape
    ``\\X0D\\`` / ``\\X0A\\``, since a template is one segment per line. Non-ASCII text is left alone: it is
    encoded whole with the message's character set.
    """
    return value.translate(_ESCAPES)


# --- paths -------------------------------------------------------------------------------------------------

_PATH = re.compile(
    r"(?P<segment>[A-Z][A-Z0-9]{2})(?:\[(?P<occurrence>[0-9]+)\])?"
    r"(?:-(?P<field>[0-9]+)(?:\[(?P<repetition>[0-9]+)\])?(?:\.(?P<component>[0-9]+)(?:\.(?P<subcomponent>[0-9]+))?)?)?"
)
_OR = re.compile(r"\s+or\s+")
_AND = re.compile(r"\s+and\s+")
_COMPARE = re.compile(r"(?P<path>\S+?)\s*(?P<op>!=|=)\s*(?P<values>.*)")
_MEMBER = re.compile(r"(?P<path>\S+)\s+(?P<op>not\s+in|in)\s+(?P<values>.+)")
_NOT = re.compile(r"not\s+(?P<path>\S+)")
_VALUE = re.compile(r"""\s*(?:'(?P<single>[^']*)'|"(?P<double>[^"]*)"|(?P<bare>[^,'"]*?))\s*(?:,|$)""")


@dataclass(frozen=True)
class Hl7Path:
    """One compiled field path; ``field`` is ``None`` for a whole segment."""

    source: str
    segment: str
    occurrence: int = 1
    field: int | None = None
    repetition: int = 1
    component: int = 1
    subcomponent: int = 1


@dataclass(frozen=True)
class Hl7PathChoice:
    """``A or B``: the first path with a value."""

    source: str
    paths: tuple[Hl7Path, ...]


def _index(text: str | None, what: str, source: str) -> int:
    if text is None:
        return 1
    value = int(text)
    if value < 1:
        raise ValueError(f"HL7 path {source!r}: {what} numbers start at 1")
    return value


def compile_path(source: str) -> Hl7Path | Hl7PathChoice:
    """Compile a path (or ``A or B``); raises :class:`ValueError` naming the bad part."""
    text = source.strip()
    parts = _OR.split(text)
    if len(parts) > 1:
        return Hl7PathChoice(text, tuple(_compile_one(part) for part in parts))
    return _compile_one(text)


def _compile_one(source: str) -> Hl7Path:
    match = _PATH.fullmatch(source.strip())
    if match is None:
        raise ValueError(
            f"HL7 path {source!r} is invalid; write SEG[occurrence]-FIELD[repetition].COMPONENT.SUBCOMPONENT, "
            "e.g. PID-5.1, PID-3[2].1, FT1[2]-7, or a segment name such as ZBL"
        )
    g = match.groupdict()
    return Hl7Path(
        source=source.strip(),
        segment=g["segment"],
        occurrence=_index(g["occurrence"], "segment occurrence", source),
        field=_index(g["field"], "field", source) if g["field"] is not None else None,
        repetition=_index(g["repetition"], "repetition", source),
        component=_index(g["component"], "component", source),
        subcomponent=_index(g["subcomponent"], "subcomponent", source),
    )


# --- rules -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Compare:
    path: Hl7Path | Hl7PathChoice
    values: frozenset[str]
    negate: bool

    def holds(self, record: Hl7Record) -> bool:
        return ((record.value(self.path) or "") in self.values) != self.negate


@dataclass(frozen=True)
class _Present:
    path: Hl7Path | Hl7PathChoice
    negate: bool = False

    def holds(self, record: Hl7Record) -> bool:
        return (record.value(self.path) is not None) != self.negate


@dataclass(frozen=True)
class Hl7Rule:
    """A compiled rule: any of the ``or`` branches, each all of its ``and`` terms."""

    source: str
    branches: tuple[tuple[_Compare | _Present, ...], ...]

    def holds(self, record: Hl7Record) -> bool:
        return any(all(term.holds(record) for term in branch) for branch in self.branches)


def _values(text: str, source: str) -> frozenset[str]:
    values = []
    position = 0
    while position < len(text):
        match = _VALUE.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"HL7 rule {source!r}: cannot read the values {text!r}")
        values.append(next(v for v in (match["single"], match["double"], match["bare"]) if v is not None))
        position = match.end()
    if not values:
        values = [""]
    return frozenset(values)


def _term(text: str, source: str) -> _Compare | _Present:
    if match := _MEMBER.fullmatch(text):
        return _Compare(compile_path(match["path"]), _values(match["values"], source), match["op"] != "in")
    if match := _COMPARE.fullmatch(text):
        values = _values(match["values"], source)
        if len(values) != 1:
            raise ValueError(f"HL7 rule {source!r}: '=' compares with one value; use 'in' for several")
        return _Compare(compile_path(match["path"]), values, match["op"] == "!=")
    if match := _NOT.fullmatch(text):
        return _Present(compile_path(match["path"]), negate=True)
    return _Present(compile_path(text))


def compile_rule(source: str) -> Hl7Rule:
    """Compile a success rule; raises :class:`ValueError`."""
    text = source.strip()
    if not text:
        raise ValueError("HL7 rule is empty")
    try:
        branches = tuple(tuple(_term(t.strip(), text) for t in _AND.split(b)) for b in _OR.split(text))
    except ValueError as exc:
        message = str(exc)
        raise ValueError(message if message.startswith("HL7 rule") else f"HL7 rule {text!r}: {message}") from None
    return Hl7Rule(text, branches)


# --- records -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Syntax:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str
    codec: str


def _pick(node: Any, index: int) -> Any:
    if isinstance(node, str):
        return node if index == 1 else None
    items = list(node)
    return items[index - 1] if index <= len(items) else None


class Hl7Record:
    """A parsed message, or one item (a segment group) of a list in it."""

    def __init__(self, segments: Sequence[hl7.Segment], syntax: _Syntax) -> None:
        self.segments = list(segments)
        self.syntax = syntax
        self._by_name: dict[str, list[hl7.Segment]] | None = None

    def segment(self, name: str, occurrence: int = 1) -> hl7.Segment | None:
        if self._by_name is None:  # indexed once: a reply is read by a dozen paths
            self._by_name = {}
            for segment in self.segments:
                self._by_name.setdefault(str(segment[0]), []).append(segment)
        found = self._by_name.get(name, ())
        return found[occurrence - 1] if occurrence <= len(found) else None

    def raw(self, path: Hl7Path) -> str | None:
        """The text at a path, unescaped but not stripped."""
        segment = self.segment(path.segment, path.occurrence)
        if segment is None:
            return None
        if path.field is None:
            return str(segment)
        if path.field >= len(segment):
            return None
        if path.segment == "MSH" and path.field in (1, 2):
            return str(segment[path.field])
        node: Any = segment[path.field]
        for index in (path.repetition, path.component, path.subcomponent):
            node = _pick(node, index)
            if node is None:
                return None
        return self.unescape(str(node))

    def value(self, path: Hl7Path | Hl7PathChoice) -> str | None:
        for one in path.paths if isinstance(path, Hl7PathChoice) else (path,):
            text = self.raw(one)
            if text is not None and text.strip():
                return text.strip()
        return None

    def test(self, rule: Hl7Rule | Hl7Path | Hl7PathChoice) -> bool:
        if isinstance(rule, Hl7Rule):
            return rule.holds(self)
        return self.value(rule) is not None

    def items(self, path: Hl7Path | Hl7PathChoice) -> list[Hl7Record]:
        if isinstance(path, Hl7PathChoice) or path.field is not None:
            raise MappingError(f"list path {path.source!r} must name a segment, such as ZBL")
        starts = [i for i, s in enumerate(self.segments) if str(s[0]) == path.segment]
        ends = [*starts[1:], len(self.segments)][: len(starts)]
        return [Hl7Record(self.segments[a:b], self.syntax) for a, b in zip(starts, ends, strict=True)]

    def unescape(self, text: str) -> str:
        """Resolve escape sequences: separators, ``\\E\\``, ``\\Xhh…\\`` (bytes in the message's charset) and
        ``\\.br\\``; highlighting and character-set switches are dropped."""
        esc = self.syntax.escape
        if esc not in text:
            return text
        out: list[str] = []
        position = 0
        while True:
            start = text.find(esc, position)
            end = text.find(esc, start + 1) if start >= 0 else -1
            if start < 0 or end < 0:
                out.append(text[position:])
                return "".join(out)
            out.append(text[position:start])
            out.append(self._sequence(text[start + 1 : end]))
            position = end + 1

    def _sequence(self, code: str) -> str:
        s = self.syntax
        simple = {"F": s.field, "S": s.component, "T": s.subcomponent, "R": s.repetition, "E": s.escape}
        if code in simple:
            return simple[code]
        if code == ".br":
            return "\r"
        if code[:1] == "X" and re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", code[1:]):
            return bytes.fromhex(code[1:]).decode(s.codec, "replace")
        return ""


class Hl7Extractor:
    """HL7 v2 replies (reply format ``hl7``); ``default_encoding`` decodes bytes whose MSH-18 is empty, and
    the ``\\X…\\`` escapes of text whose MSH-18 is empty."""

    def __init__(self, default_encoding: str = DEFAULT_ENCODING) -> None:
        self.default_encoding = default_encoding

    def compile_path(self, path: str) -> Hl7Path | Hl7PathChoice:
        return compile_path(path)

    def compile_rule(self, rule: str) -> Hl7Rule:
        return compile_rule(rule)

    def parse(self, raw: str | bytes) -> Hl7Record:
        if raw is None or not raw.strip():
            raise MappingError("the reply is empty")
        if isinstance(raw, bytes):
            try:
                text, codec, _ = decode(raw, self.default_encoding)
            except (UndecodableMessage, CharsetError) as exc:
                raise MappingError(str(exc)) from None
        elif isinstance(raw, str):
            text = normalize(raw)
            declared = declared_charset(text.split("\r", 1)[0])
            try:
                codec = codec_for(declared or self.default_encoding)
            except CharsetError:
                codec = codec_for(self.default_encoding)
        else:
            raise MappingError(f"the reply is {type(raw).__name__}, not an HL7 message")
        return parse_message(text, codec)


def parse_message(text: str, codec: str) -> Hl7Record:
    """Parse decoded text (CR segment ends) into a record; raises :class:`MappingError`."""
    if not text.startswith("MSH") or len(text) < 8:
        raise MappingError("the reply is not an HL7 message: it does not start with an MSH segment")
    try:
        message = hl7.parse(text)
    except (hl7.exceptions.ParseException, ValueError, IndexError) as exc:
        raise MappingError(f"the reply is not a well-formed HL7 message: {exc}") from None
    separators = message.separators
    syntax = _Syntax(
        field=separators[1],
        repetition=separators[2],
        component=separators[3],
        subcomponent=separators[4],
        escape=message.esc,
        codec=codec,
    )
    return Hl7Record(list(message), syntax)
