"""The gateway's logs: patient data and payment credentials masked, tracebacks included (issue 15, item 8)."""

import json
from types import SimpleNamespace

import structlog

from gateway import cli


def test_fields_free_text_and_tracebacks_are_masked(capsys):
    cli._configure_logging(SimpleNamespace(logging=SimpleNamespace(level="info", format="json")))  # as `serve` does
    try:
        log = structlog.get_logger("gateway")
        log.info("sms_sent", phone="13800000001", auth_code="134567890123456789", password="hunter2hunter2")
        try:
            raise RuntimeError("bridge refused: id 110105198503120011 / 13912345678")
        except RuntimeError:
            log.exception("internal_error", path="/v1/orders")
    finally:
        structlog.reset_defaults()
    err = capsys.readouterr().err
    sent, crashed = (json.loads(line) for line in err.strip().splitlines()[-2:])
    assert sent["phone"] == "138*****001" and sent["auth_code"] == "134************789"
    assert sent["password"] == "***"
    assert "RuntimeError" in crashed["exception"]
    assert "110105********0011" in crashed["exception"] and "139****5678" in crashed["exception"]
    for secret in ("13800000001", "134567890123456789", "hunter2hunter2", "110105198503120011", "13912345678"):
        assert secret not in err
