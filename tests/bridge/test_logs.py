import json
import logging

import structlog

from bridge import logs


def test_patient_fields_and_free_text_are_masked(capsys):
    logs.configure("info", json=True)
    try:
        structlog.get_logger("t").info(
            "lookup",
            name="张三丰",
            id_card_no="110105198503120011",
            phone="13800000001",
            detail={"patient_name": "李四", "note": "callback 13912345678, id 44030519781130003X"},
            message="HIS said: 患者 110105198503120011 not found",
            amount_fen=1250,
        )
    finally:
        structlog.reset_defaults()
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["name"] == "张**"
    assert line["id_card_no"] == "110************011"
    assert line["phone"] == "138*****001"
    assert line["detail"]["patient_name"] == "李*"
    assert line["detail"]["note"] == "callback 139****5678, id 440305********003X"
    assert line["message"] == "HIS said: 患者 110105********0011 not found"
    assert line["amount_fen"] == 1250


def test_a_traceback_is_masked_after_it_is_formatted(capsys):
    logs.configure("info", json=True)
    try:
        try:
            raise ValueError("HIS refused patient 110105198503120011, phone 13800000001")
        except ValueError:
            structlog.get_logger("t").exception("adapter_crashed", operation="patient.query")
    finally:
        structlog.reset_defaults()
    err = capsys.readouterr().err
    line = json.loads(err.strip().splitlines()[-1])
    assert "Traceback" in line["exception"] and "ValueError" in line["exception"]
    assert "110105********0011" in line["exception"] and "138****0001" in line["exception"]
    assert "110105198503120011" not in err and "13800000001" not in err


def test_a_library_record_through_the_standard_library_is_one_masked_json_line(capsys):
    """zeep, aiohttp and SQLAlchemy log through the standard library: their lines are masked JSON too, not raw
    text on stderr (found by the hardening issue: a library warning quoting a patient's phone went out as is)."""

    logs.configure("info", json=True)
    try:
        logging.getLogger("zeep.transports").warning(
            "HTTP 500 for patient %s, phone %s", "110105198503120011", "13800000001"
        )
        logging.getLogger("aiohttp.access").debug("below the level: not written")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    lines = [json.loads(x) for x in capsys.readouterr().err.strip().splitlines()]
    assert len(lines) == 1
    line = lines[0]
    assert line["event"] == "HTTP 500 for patient 110105********0011, phone 138****0001"
    assert line["logger"] == "zeep.transports" and line["level"] == "warning" and "timestamp" in line


def test_payment_codes_and_secrets_are_masked_on_the_agent_too(capsys):
    """The intranet listener forwards a scanner's 付款码: a bearer credential while it lives."""
    logs.configure("info", json=True)
    try:
        structlog.get_logger("t").info("codepay", auth_code="134567890123456789", token="abc", password="")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["auth_code"] == "134************789" and line["token"] == "***" and line["password"] == ""


def test_library_records_follow_stderr_when_it_is_replaced(monkeypatch):
    """A host that swaps stderr after configuration (a daemon's redirect, a test runner's capture) must not leave
    the standard library's records writing to the closed stream (seen in CI as "I/O operation on closed file")."""
    import io

    first = io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    logs.configure("info", json=True)
    try:
        first.close()
        second = io.StringIO()
        monkeypatch.setattr("sys.stderr", second)
        logging.getLogger("httpx").info("HTTP Request: GET %s", "http://his/ws?wsdl")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert json.loads(second.getvalue())["event"] == "HTTP Request: GET http://his/ws?wsdl"
