"""Channel statements: one parser per channel's file format, all producing ``normalize.StatementRow``."""

from __future__ import annotations

from collections.abc import Callable

from gateway.recon.normalize import ParsedStatement
from gateway.recon.statements import alipay, unionpay, wechat

PARSERS: dict[str, Callable[..., ParsedStatement]] = {
    "wechat": wechat.parse,
    "alipay": alipay.parse,
    "unionpay": unionpay.parse,
}


def parse(channel: str, data: bytes, *, merchant: str | None = None) -> ParsedStatement:
    try:
        parser = PARSERS[channel]
    except KeyError:
        raise ValueError(f"no statement parser for channel {channel!r}") from None
    return parser(data, merchant=merchant)
