"""One catalog operation bound to one HIS call: the request templates out, the reply rule back.

Adapters drive a binding the same way whatever the protocol: ``render`` before sending (a failure there is
permanent, nothing left the bridge) and ``reply`` on what came back. ``reply`` is where a mapping failure on
a write turns into :class:`ReplyMappingError` (in doubt): the HIS answered, so it may have applied the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapters.mapping.errors import MappingError, ReplyMappingError
from adapters.mapping.extract import Extractor, Record, ReplyRule
from adapters.mapping.filters import Filters
from adapters.mapping.templates import RequestTemplate


@dataclass(frozen=True)
class StepBinding:
    """One call of a multi-call sequence (stored procedures): its request, and the rule that checks its reply
    and saves values (a session id) for the next steps' templates as ``{{ saved.NAME }}``."""

    call: str
    request: RequestTemplate
    rule: ReplyRule | None = None
    repeat_over: str | None = None
    """A list input (``bill_nos``): the step runs once per item, the item in templates as ``{{ item }}``."""


@dataclass(frozen=True)
class OperationBinding:
    operation: str
    call: str
    request: RequestTemplate
    reply_rule: ReplyRule
    extractor: Extractor
    filters: Filters
    write: bool = True
    """Unless the bridge says an operation is a read, it is treated as a write: the safe side."""
    steps: tuple[StepBinding, ...] = ()
    """A sequence of calls instead of ``call``/``request``; ``reply_rule`` reads the last one's reply."""

    def render(self, params: dict[str, Any]) -> dict[str, str]:
        return self.request.render(params)

    def reply(self, raw: str | bytes | None) -> dict[str, Any]:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        try:
            record = self.extractor.parse(raw)  # type: ignore[arg-type]
        except MappingError as exc:
            raise self.unmappable(exc.message, raw=text) from None
        return self.reply_parsed(record, text)

    def reply_parsed(self, record: Record, text: str | None) -> dict[str, Any]:
        """``reply`` for a reply the adapter has already parsed (HL7 parses it to check MSA-2): the same
        rule and errors, without parsing it a second time."""
        try:
            return self.reply_rule.apply(record, self.filters, raw=text)
        except MappingError as exc:
            raise self.unmappable(exc.message, raw=text) from None

    def unmappable(self, message: str, *, raw: str | None = None) -> MappingError | ReplyMappingError:
        """The error for a reply that arrived but cannot be read: in doubt for a write."""
        where = f"{self.operation} ({self.call}): {message}"
        if self.write:
            return ReplyMappingError(where, raw=raw)
        return MappingError(where, raw=raw)
