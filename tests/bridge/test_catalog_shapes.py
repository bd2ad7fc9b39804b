"""The catalog shapes the gateway calls for refunds: ``refund.cancel`` and the refund fields of a ``recon.fetch``
record, as validated on the way in and out and as published (the OpenAPI document, docs/AGENT.md's table)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bridge import catalog, openapi

RECORD = {
    "trade_no": "T20251114000001",
    "kind": "refund",
    "receipt_no": None,
    "amount_fen": 1250,
    "channel": "wechat",
    "channel_trade_no": "4200001234",
    "refund_no": "R20251114000001",
    "time": "2025-11-14T23:50:00+08:00",
}


def test_refund_cancel_is_a_write_keyed_on_its_trade_and_checked_by_refund_no() -> None:
    op = catalog.OPERATIONS["refund.cancel"]
    assert op.write and "refund.cancel" in catalog.WRITE_OPERATIONS
    params = op.input.model_validate({"request_id": "req-cx-0001", "trade_no": "T1", "refund_no": "R1"})
    assert op.check_input(params).model_dump() == {"trade_no": "T1", "operation": "refund.cancel", "refund_no": "R1"}
    found = catalog.TradeCheckOut(found=True, receipt_no="CX20251114000001", amount_fen=1250, status="cancelled")
    assert op.output.model_validate(op.from_check(found)).model_dump() == {
        "cancelled": True,
        "receipt_no": "CX20251114000001",
        "amount_fen": 1250,
    }


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"trade_no": "T1", "refund_no": "R1"}, "request_id"),
        ({"request_id": "req-cx-0001", "trade_no": "T1"}, "refund_no"),
        ({"request_id": "req-cx-0001", "trade_no": "T1", "refund_no": "R1", "amount_fen": 100}, "amount_fen"),
        ({"request_id": "req-cx-0001", "trade_no": "T1", "refund_no": "R 1"}, "refund_no"),
        ({"request_id": "req-cx-0001", "trade_no": "T1", "refund_no": "R1", "reason": "x" * 201}, "reason"),
    ],
)
def test_refund_cancel_input_is_strict(params: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        catalog.RefundCancelIn.model_validate(params)
    assert [error["loc"][0] for error in refused.value.errors()] == [field]


def test_a_his_answer_saying_not_cancelled_is_not_an_answer() -> None:
    """A HIS that will not cancel must answer an error code; a mapped ``cancelled: false`` is refused, so the
    bridge treats the reply as unreadable (in doubt) instead of reporting success."""
    with pytest.raises(ValidationError):
        catalog.RefundCancelOut.model_validate({"cancelled": False})
    assert catalog.RefundCancelOut.model_validate({"cancelled": True}).receipt_no is None


def test_recon_records_from_older_profiles_still_validate() -> None:
    record = catalog.ReconRecord.model_validate(RECORD)
    assert (record.refund_state, record.channel_refund_no, record.written_back_at) == (None, None, None)


def test_recon_refund_state_and_serial() -> None:
    written_back = catalog.ReconRecord.model_validate(
        {
            **RECORD,
            "receipt_no": "TF20251115000001",
            "refund_state": "written_back",
            "channel_refund_no": "50300000000000000001",
            "written_back_at": "2025-11-15T00:45:00+08:00",
        }
    )
    assert written_back.written_back_at is not None and written_back.written_back_at.day == 15
    with pytest.raises(ValidationError, match="refund_state"):
        catalog.ReconRecord.model_validate({**RECORD, "refund_state": "cancelled"})
    with pytest.raises(ValidationError, match="belong to refund records only"):
        catalog.ReconRecord.model_validate(
            {**RECORD, "kind": "charge", "refund_no": None, "channel_refund_no": "50300000000000000001"}
        )


def test_the_openapi_document_publishes_both() -> None:
    doc = openapi.build("test")
    post = doc["paths"]["/v1/ops/refund.cancel"]["post"]
    assert post["tags"] == ["write"] and "202" in post["responses"]
    schemas = doc["components"]["schemas"]
    assert set(schemas["RefundCancelIn"]["required"]) == {"request_id", "trade_no", "refund_no"}
    assert set(schemas["RefundCancelOut"]["properties"]) == {"cancelled", "receipt_no", "amount_fen"}
    state = schemas["ReconRecord"]["properties"]["refund_state"]
    assert {"enum": ["applied", "written_back"], "type": "string"} in state["anyOf"]
    assert {"refund_state", "channel_refund_no", "written_back_at"}.isdisjoint(schemas["ReconRecord"]["required"])


def test_the_agent_doc_lists_every_operation_of_the_catalog() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "AGENT.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| `([a-z]+\.[a-z]+)` \| (read|write) \|", text, flags=re.MULTILINE))
    assert table == {name: "write" if op.write else "read" for name, op in catalog.OPERATIONS.items()}
