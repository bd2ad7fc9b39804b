"""Structured JSON logs with patient data masked.

Logs leave the hospital in support tickets; a patient's name, ID-card number or phone must never be in them.
Masking is a structlog processor, so it applies to every event whatever the call site logged; it runs after
exceptions and stacks are formatted into text, which is where a patient's number hides in an error message. The
gateway logs through this module too: one set of rules for both.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

NAME_KEYS = {"name", "patient_name", "payer_name"}
SENSITIVE_KEYS = NAME_KEYS | {"id_card_no", "phone", "mobile", "card_no", "address", "auth_code"}
"""Masked to their ends; ``auth_code`` is a payer's 付款码, a bearer credential while it lives."""
SECRET_KEYS = {"password", "token", "secret", "api_key", "private_key"}
_ID_CARD = re.compile(r"(?<!\d)(\d{6})\d{8}(\d{3}[\dXx])(?!\d)")
_PHONE = re.compile(r"(?<!\d)(1[3-9]\d)\d{4}(\d{4})(?!\d)")


def mask_value(key: str, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_value(key, v) for v in value]
    if key in SECRET_KEYS and value not in (None, ""):
        return "***"
    if not isinstance(value, str):
        return value
    if key in SENSITIVE_KEYS and value:
        if key in NAME_KEYS:
            return value[0] + "*" * (len(value) - 1) if len(value) > 1 else "*"
        keep = 3 if len(value) > 7 else 1
        return value[:keep] + "*" * max(len(value) - 2 * keep, 1) + value[-keep:]
    value = _ID_CARD.sub(r"\1********\2", value)
    return _PHONE.sub(r"\1****\2", value)


def mask_processor(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event.keys()):
        event[key] = mask_value(key, event[key])
    return event


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the moment of the record, not the one at configuration: a host that
    swaps the stream (a test runner's capture, a daemon's redirect) would otherwise leave us writing to a closed
    file."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(level: str = "info", json: bool = True) -> None:
    """Our events, and the standard library's records (aiohttp, zeep, SQLAlchemy, the sandboxes' own loggers), as
    one stream of masked lines: a library's warning quotes whatever it was given, a patient's number included."""
    threshold = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer = structlog.processors.JSONRenderer(ensure_ascii=False) if json else structlog.dev.ConsoleRenderer()
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            mask_processor,  # after formatting: a traceback's text carries whatever the exception's message held
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, stamp],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                mask_processor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(threshold)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
