"""MLLP framing and character sets on real sockets, both ways: the adapter against a scripted peer that sends
what no well-behaved HIS would, and the sandbox listener against raw bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.base import InDoubtError, PermanentError
from adapters.hl7 import Hl7Adapter
from adapters.hl7_codec import decode
from adapters.mapping.hl7 import compile_path, parse_message
from sandbox.cli import SandboxHis, start_sandbox_his
from tests.support.hl7rig import Answer, ScriptedPeer, ack, caller, framed, make_adapter, paid

RECEIPT = "ZRC|SF20250314000001\r"


async def peer_and_adapter(answer: Answer, **overrides: Any) -> tuple[ScriptedPeer, Hl7Adapter]:
    peer = ScriptedPeer(answer)
    port = await peer.start()
    return peer, make_adapter(port=port, **overrides)


@pytest.fixture
async def his() -> AsyncIterator[SandboxHis]:
    his = await start_sandbox_his(mllp=("127.0.0.1", 0))
    try:
        yield his
    finally:
        await his.close()


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("cr", lambda text: framed(text.encode("gb18030"))),
        ("lf", lambda text: framed(text.replace("\r", "\n").encode("gb18030"))),
        ("crlf", lambda text: framed(text.replace("\r", "\r\n").encode("gb18030"))),
        ("no final cr", lambda text: framed(text.rstrip("\r").encode("gb18030"))),
        ("fs without cr", lambda text: framed(text.encode("gb18030"), end=b"\x1c")),
        ("fs cr lf", lambda text: framed(text.encode("gb18030"), end=b"\x1c\r\n")),
    ],
)
async def test_segment_and_frame_ends_are_tolerated(name: str, shape: Any) -> None:
    def answer(control_id: str) -> bytes:
        text = ack(control_id, extra=RECEIPT)
        return shape(text) if shape is not None else framed(text.encode("gb18030"))

    peer, adapter = await peer_and_adapter(answer)
    try:
        call = caller(adapter)
        for n in range(3):  # the same kept-alive connection, so leftovers between frames must not matter
            result = await call("charge.commit", **paid(f"TW{n}", 1250, bill_nos=["B0001"]))
            assert result == {"receipt_no": "SF20250314000001"}
    finally:
        await adapter.close()
        await peer.close()
    assert len(peer.requests) == 3 and adapter.counters["ack"] == 3


async def test_undecodable_reply_is_a_clear_counted_error_not_a_hang() -> None:
    def answer(control_id: str) -> bytes:
        return framed(ack(control_id).encode("gb18030").replace("成功".encode("gb18030"), b"\x81\x20\xff"))

    peer, adapter = await peer_and_adapter(answer, **{"hl7.ack_timeout_s": 60})
    events: list[tuple[str, str]] = []
    adapter.on_event = lambda event, detail: events.append((event, detail))
    try:
        async with asyncio.timeout(10):
            with pytest.raises(InDoubtError) as write:
                await caller(adapter)("charge.commit", **paid("TU1", 1250, bill_nos=["B0001"]))
            with pytest.raises(PermanentError) as read:
                await caller(adapter)("bills.unpaid", patient_id="P0001")
    finally:
        await adapter.close()
        await peer.close()
    assert write.value.code == read.value.code == "undecodable"
    assert "not valid gb18030" in write.value.message and "bytes 81" in write.value.message
    assert adapter.counters["undecodable"] == 2
    assert ("undecodable", "GB 18030-2000") in events


async def test_a_frame_over_the_cap_is_refused_and_the_connection_closed() -> None:
    def answer(control_id: str) -> bytes:
        return framed(ack(control_id, extra="NTE|1|" + "x" * 1_100_000 + "\r").encode("gb18030"))

    peer, adapter = await peer_and_adapter(answer)
    try:
        with pytest.raises(InDoubtError) as err:
            await caller(adapter)("charge.commit", **paid("TF1", 1250, bill_nos=["B0001"]))
        async with asyncio.timeout(10):
            while peer.closed_by_client == 0:  # noqa: ASYNC110 - set by the peer's connection task
                await asyncio.sleep(0.02)
    finally:
        await adapter.close()
        await peer.close()
    assert err.value.code == "frame_too_large" and "1048576 bytes" in err.value.message
    assert adapter.counters["frame_too_large"] == 1


async def test_garbage_instead_of_a_frame_and_missing_msa() -> None:
    answers = iter(
        [
            lambda cid: b"HTTP/1.1 400 Bad Request\r\n\r\n",
            lambda cid: framed(f"MSH|^~\\&|HIS|H|B|P|1||ACK^P03|X|P|2.4\rZRC|{cid}\r".encode()),
            lambda cid: framed(ack(cid, code="ZZ").encode()),
        ]
    )
    peer, adapter = await peer_and_adapter(lambda cid: next(answers)(cid))
    codes = []
    try:
        for n in range(3):
            with pytest.raises(InDoubtError) as err:
                await caller(adapter)("charge.commit", **paid(f"TG{n}", 1250, bill_nos=["B0001"]))
            codes.append(err.value.code)
    finally:
        await adapter.close()
        await peer.close()
    assert codes == ["bad_frame", "ack_mismatch", "mapping_error"]


# --- the sandbox listener on raw bytes ---------------------------------------------------------------------

QUERY = "MSH|^~\\&|T|T|HIS|H|20250314093000||QBP^Q11^QBP_Q11|{cid}|P|2.4{charset}\rQPD|ZPQ^PatientQuery|{cid}|C0001\r"
MSA_1, MSA_2, PID_5, MSH_18 = (compile_path(p) for p in ("MSA-1", "MSA-2", "PID-5.1", "MSH-18"))


async def exchange(his: SandboxHis, *frames: bytes) -> list[bytes]:
    reader, writer = await asyncio.open_connection(*his.mllp_address)
    replies = []
    try:
        for frame in frames:
            writer.write(frame)
            await writer.drain()
            replies.append(await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10))
    finally:
        writer.close()
    return replies


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n"])
@pytest.mark.parametrize(("charset", "codec"), [("", "gb18030"), ("|||||CHN|UNICODE UTF-8", "utf-8")])
async def test_sandbox_reads_any_segment_end_and_answers_in_the_request_charset(
    his: SandboxHis, separator: str, charset: str, codec: str
) -> None:
    text = QUERY.format(cid="Q1", charset=charset).replace("\r", separator).rstrip(separator)
    [raw] = await exchange(his, framed(text.encode(codec)))
    assert raw.startswith(b"\x0b") and raw.endswith(b"\x1c\r")
    reply, reply_codec, declared = decode(raw[1:-2], "GB18030")
    record = parse_message(reply, reply_codec)
    assert (record.value(MSA_1), record.value(MSA_2), record.value(PID_5)) == ("AA", "Q1", "张三")
    assert reply_codec == codec and declared == (charset.rsplit("|", 1)[1] if charset else None)
    assert "张三".encode(codec) in raw


async def test_sandbox_refuses_undecodable_bytes_with_ar_and_closes_oversized_frames(his: SandboxHis) -> None:
    bad = QUERY.format(cid="Q2", charset="|||||CHN|UNICODE UTF-8").encode() + b"NTE|1|\xff\xfe\r"
    [raw] = await exchange(his, framed(bad))
    record = parse_message(raw[1:-2].decode("ascii"), "ascii")
    assert (record.value(MSA_1), record.value(MSA_2)) == ("AR", "Q2")
    assert his.mllp is not None and his.mllp.undecodable == 1

    reader, writer = await asyncio.open_connection(*his.mllp_address)
    try:
        writer.write(b"\x0b" + b"MSH|" + b"x" * (1024 * 1024 + 10) + b"\x1c\r")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionError:
        pass
    finally:
        writer.close()


async def test_sandbox_answers_several_frames_on_one_connection(his: SandboxHis) -> None:
    frames = [framed(QUERY.format(cid=f"Q{n}", charset="").encode("gb18030"), end=b"\x1c\r\n") for n in range(3)]
    replies = await exchange(his, *frames)
    ids = [parse_message(decode(r.lstrip(b"\n")[1:-2], "GB18030")[0], "gb18030").value(MSA_2) for r in replies]
    assert ids == ["Q0", "Q1", "Q2"]
