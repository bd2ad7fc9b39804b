"""Structured JSON logs with patient data masked.

Logs leave the hospital in support tickets; a patient's name, ID-card number or phone must never be in them.
Masking is a structlog processor, so it applies to every event whatever the call site logged; it runs after
exceptions and stacks are formatted into text, which is where a patient's number hides in an error message.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SENSITIVE_KEYS = {"name", "patient_name", "id_card_no", "phone", "mobile", "card_no", "address"}
_ID_CARD = re.compile(r"(?<!\d)(\d{6})\d{8}(\d{3}[\dXx])(?!\d)")
_PHONE = re.compile(r"(?<!\d)(1[3-9]\d)\d{4}(\d{4})(?!\d)")


def mask_value(key: str, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: mask_value(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_value(key, v) for v in value]
    if not isinstance(value, str):
        return value
    if key in SENSITIVE_KEYS and value:
        if key in ("name", "patient_name"):
            return value[0] + "*" * (len(value) - 1) if len(value) > 1 else "*"
        keep = 3 if len(value) > 7 else 1
        return value[:keep] + "*" * max(len(value) - 2 * keep, 1) + value[-keep:]
    value = _ID_CARD.sub(r"\1********\2", value)
    return _PHONE.sub(r"\1****\2", value)


def mask_processor(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event.keys()):
        event[key] = mask_value(key, event[key])
    return event


def configure(level: str = "info", json: bool = True) -> None:
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        mask_processor,  # after formatting: a traceback's text carries whatever the exception's message held
        structlog.processors.JSONRenderer(ensure_ascii=False) if json else structlog.dev.ConsoleRenderer(),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
