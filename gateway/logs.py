"""The gateway's structured logs, with patient data and payment credentials masked.

Logs go to support tickets and log platforms; a patient's phone or ID-card number, a name, or a payer's
payment code (付款码, a bearer credential while it lives) must never be in them. Masking is the last processor
before rendering, so it also covers the text of formatted tracebacks: an exception message that quotes a phone
number is masked like any field. The rules mirror the agent's (``bridge.logs``), which the gateway may not
import (imports flow one way), plus the gateway's own credentials.
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


def configure(level: str = "info", json: bool = True) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            mask_processor,
            structlog.processors.JSONRenderer(ensure_ascii=False) if json else structlog.dev.ConsoleRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
