"""Reply mapping: from what the HIS answered to the catalog output, protocol-neutral at the core.

A reply goes through three steps. An :class:`Extractor` parses the raw reply into a :class:`Record` and
compiles the profile's paths (XPath for XML today; HL7 field paths and result-set columns plug in the same
way). A :class:`ReplyRule` then decides the outcome from the record: the success rule holds → the fields are
read and converted to catalog types; the HIS error code is one of the profile's ``answers`` → that fixed
output (for example "patient not found" is an answer, not an error); a ``retryable_codes`` code →
:class:`~adapters.base.RetryableError`; anything else → :class:`~adapters.base.PermanentError` carrying the
HIS code and message. A reply the rule cannot read raises :class:`MappingError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lxml import etree

from adapters.base import PermanentError, RetryableError
from adapters.mapping.errors import FilterError, MappingError
from adapters.mapping.filters import Filters

HIS_ERROR = "his_error"


class Record(Protocol):
    """One parsed reply (or one item of a list in it)."""

    def value(self, path: Any) -> str | None:
        """The text at a compiled path, stripped; ``None`` when absent or empty."""

    def test(self, rule: Any) -> bool:
        """Evaluate a compiled boolean rule."""

    def items(self, path: Any) -> Sequence[Record]:
        """The records of the list items a compiled path selects."""


class Extractor(Protocol):
    """Parses replies of one protocol and compiles that protocol's paths."""

    def compile_path(self, path: str) -> Any:
        """Raises :class:`ValueError` when the path is invalid."""

    def compile_rule(self, rule: str) -> Any:
        """Raises :class:`ValueError` when the rule is invalid."""

    def parse(self, raw: str | bytes) -> Record:
        """Raises :class:`MappingError` when the reply cannot be parsed."""


_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


class XmlRecord:
    """An element of an XML reply; paths are XPath expressions relative to it."""

    def __init__(self, element: etree._Element) -> None:
        self.element = element

    def _eval(self, path: etree.XPath) -> Any:
        try:
            return path(self.element)
        except etree.XPathError as exc:
            raise MappingError(f"xpath {path.path!r} failed: {exc}") from None

    def value(self, path: etree.XPath) -> str | None:
        result = self._eval(path)
        if isinstance(result, list):
            if not result:
                return None
            if len(result) > 1:
                raise MappingError(f"xpath {path.path!r} matched {len(result)} nodes, expected one")
            result = result[0]
        if isinstance(result, bool):
            text = "true" if result else "false"
        elif isinstance(result, float):
            if math.isnan(result):
                return None
            text = str(int(result)) if result.is_integer() else repr(result)
        elif isinstance(result, etree._Element):
            text = "".join(result.itertext())
        else:
            text = str(result)
        text = text.strip()
        return text or None

    def test(self, rule: etree.XPath) -> bool:
        result = self._eval(rule)
        if isinstance(result, float):
            return not math.isnan(result) and result != 0
        return bool(result)

    def items(self, path: etree.XPath) -> list[XmlRecord]:
        result = self._eval(path)
        if not isinstance(result, list) or not all(isinstance(item, etree._Element) for item in result):
            raise MappingError(f"xpath {path.path!r} must select elements")
        return [XmlRecord(item) for item in result]


class XmlExtractor:
    """XML replies, including the XML-in-a-string results of many Chinese HIS web services.

    Such a string often still declares ``encoding="GBK"`` although it has long been decoded; the declaration
    is ignored for text and honoured for bytes. The parser resolves no entities, loads no DTD, never touches
    the network, refuses huge trees and refuses any DOCTYPE.
    """

    def __init__(self, namespaces: Mapping[str, str] | None = None) -> None:
        self.namespaces = dict(namespaces or {})

    def compile_path(self, path: str) -> etree.XPath:
        try:
            return etree.XPath(path, namespaces=self.namespaces)
        except etree.XPathSyntaxError as exc:
            raise ValueError(f"xpath is invalid: {path!r}: {exc}") from None

    def compile_rule(self, rule: str) -> etree.XPath:
        return self.compile_path(rule)

    @staticmethod
    def _parser(encoding: str | None) -> etree.XMLParser:
        return etree.XMLParser(
            encoding=encoding,
            resolve_entities=False,
            no_network=True,
            huge_tree=False,
            load_dtd=False,
            dtd_validation=False,
            remove_comments=True,
            remove_pis=True,
        )

    def parse(self, raw: str | bytes) -> XmlRecord:
        if raw is None or (isinstance(raw, str | bytes) and not raw.strip()):
            raise MappingError("the reply is empty")
        try:
            if isinstance(raw, str):
                text = _XML_DECLARATION.sub("", raw, count=1)
                root = etree.fromstring(text.encode("utf-8"), self._parser("utf-8"))
            elif isinstance(raw, bytes):
                root = etree.fromstring(raw, self._parser(None))
            else:
                raise MappingError(f"the reply is {type(raw).__name__}, not XML text")
        except etree.XMLSyntaxError as exc:
            raise MappingError(f"the reply is not well-formed XML: {exc}") from None
        if root.getroottree().docinfo.doctype:
            raise MappingError("the reply carries a DOCTYPE, which HIS replies never need; refused")
        return XmlRecord(root)


@dataclass(frozen=True)
class FieldRule:
    """One output field: read at ``path`` (or the constant ``const``), converted to ``kind``."""

    name: str
    path: Any = None
    source: str | None = None
    const: Any = None
    kind: str = "str"
    fmt: str | None = None
    code: str | None = None
    required: bool = False
    default: Any = None

    def read(self, record: Record, filters: Filters) -> Any:
        if self.path is None:
            return self.const
        text = record.value(self.path)
        if text is None:
            if self.required and self.default is None:
                raise MappingError(f"field {self.name}: the reply has no value at {self.source!r}")
            return self.default
        try:
            if self.code is not None:
                text = filters.codes.decode(text, self.code)
            return filters.convert(text, self.kind, self.fmt)
        except FilterError as exc:
            raise MappingError(f"field {self.name} ({self.source!r}): {exc}") from None


@dataclass(frozen=True)
class ListRule:
    """A list output field: one item per node ``path`` selects, each read with ``fields``."""

    name: str
    path: Any
    fields: tuple[FieldRule, ...]

    def read(self, record: Record, filters: Filters) -> list[dict[str, Any]]:
        out = []
        for index, item in enumerate(record.items(self.path)):
            try:
                out.append({rule.name: rule.read(item, filters) for rule in self.fields})
            except MappingError as exc:
                raise MappingError(f"{self.name}[{index}]: {exc.message}") from None
        return out


@dataclass(frozen=True)
class ReplyRule:
    """How one operation's reply becomes its catalog output or an error that says what to do next."""

    success: Any
    error_code: Any = None
    error_message: Any = None
    retryable_codes: frozenset[str] = frozenset()
    answers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    fields: tuple[FieldRule, ...] = ()
    lists: tuple[ListRule, ...] = ()

    def apply(self, record: Record, filters: Filters, *, raw: str | None = None) -> dict[str, Any]:
        if not record.test(self.success):
            code = record.value(self.error_code) if self.error_code is not None else None
            message = record.value(self.error_message) if self.error_message is not None else None
            if code is not None and code in self.answers:
                return dict(self.answers[code])
            if code is not None and code in self.retryable_codes:
                raise RetryableError(code, message or "HIS busy", raw=raw)
            raise PermanentError(code or HIS_ERROR, message or "the HIS refused the call", raw=raw)
        out: dict[str, Any] = {rule.name: rule.read(record, filters) for rule in self.fields}
        for rule in self.lists:
            out[rule.name] = rule.read(record, filters)
        return out
