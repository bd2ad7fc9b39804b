"""HL7 reply mapping and character sets without a socket: paths, rules, escaping, MSH-18 found on bytes."""

from __future__ import annotations

from pathlib import Path

import hl7
import pytest

from adapters.hl7_codec import CharsetError, UndecodableMessage, codec_for, decode, hl7_name
from adapters.mapping.errors import MappingError
from adapters.mapping.hl7 import Hl7Extractor, escape
from tests.support.rig import FIXTURES

FIXTURES = sorted((FIXTURES / "hl7").glob("*.hl7"))
X = Hl7Extractor()

REPLY = (
    "MSH|^~\\&|HIS|H|BR|P|20250314092958||RSP^K11^RSP_K11|R1|P|2.4|||||CHN|UNICODE UTF-8\r"
    "MSA|AA|C1|成功\r"
    "QAK|C1|OK|ZPQ^PatientQuery\r"
    "PID|1||P0001^^^^PI~C0001^^^^PT||王\\F\\五^^||19850312|M|||||13800000001\r"
    "ZBL|B1|内科|12.50|20250314092958\r"
    "NTE|1|first bill's note\r"
    "ZBL|B2|外\\S\\科|86.00|20250314092958\r"
    "FT1|1|T1||||CG|B1\r"
    "FT1|2|T1||||CG|B2\\X0D0A\\next\r"
)


def value(path: str, text: str = REPLY) -> str | None:
    return X.parse(text).value(X.compile_path(path))


def holds(rule: str, text: str = REPLY) -> bool:
    return X.parse(text).test(X.compile_rule(rule))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("MSA-1", "AA"),
        ("MSA-2", "C1"),
        ("MSH-1", "|"),
        ("MSH-2", "^~\\&"),
        ("MSH-9", "RSP"),
        ("MSH-9.2", "K11"),
        ("MSH-18", "UNICODE UTF-8"),
        ("PID-3", "P0001"),
        ("PID-3.5", "PI"),
        ("PID-3[2].1", "C0001"),
        ("PID-3[2].5", "PT"),
        ("PID-3[3].1", None),
        ("PID-5.1", "王|五"),
        ("PID-5.2", None),
        ("PID-13", "13800000001"),
        ("PID-40", None),
        ("ZBL[2]-2", "外^科"),
        ("FT1[2]-7", "B2\r\nnext"),
        ("FT1-7.1.1", "B1"),
        ("ZZZ-1", None),
        ("MSA-6.1 or QAK-2", "OK"),
        ("ZZZ-1 or ZZZ-2", None),
    ],
)
def test_paths(path: str, expected: str | None) -> None:
    assert value(path) == expected


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("MSA-1 in AA,CA", True),
        ("MSA-1 in AE, CE", False),
        ("MSA-1 not in AE,AR", True),
        ("MSA-1 = AA", True),
        ("MSA-1 != AA", False),
        ("QAK-2 = OK and MSA-1 = AA", True),
        ("QAK-2 = NF or MSA-1 = AA", True),
        ("QAK-2 = NF and MSA-1 = AA or ZBL", True),
        ("MSA-6 = ''", True),
        ("MSA-3 = '成功'", True),
        ('PID-5.1 = "王|五"', True),
        ("ZRC", False),
        ("not ZRC", True),
        ("PID-13", True),
    ],
)
def test_rules(rule: str, expected: bool) -> None:
    assert holds(rule) is expected


@pytest.mark.parametrize(
    "bad", ["pid-1", "PID-0", "PID-1.", "PID-1[0]", "MSA-1 in", "MSA-1 = A,B", "P-1", "PID-1 = 'x"]
)
def test_bad_paths_and_rules_say_what_is_wrong(bad: str) -> None:
    with pytest.raises(ValueError, match="HL7"):
        X.compile_rule(bad)


def test_lists_are_segment_groups() -> None:
    record = X.parse(REPLY)
    items = record.items(X.compile_path("ZBL"))
    assert [i.value(X.compile_path("ZBL-1")) for i in items] == ["B1", "B2"]
    assert [i.value(X.compile_path("NTE-2")) for i in items] == ["first bill's note", None]
    assert record.items(X.compile_path("ZRC")) == []
    with pytest.raises(MappingError, match="must name a segment"):
        record.items(X.compile_path("ZBL-1"))


def test_escape_makes_every_separator_data() -> None:
    nasty = "a|b^c&d~e\\f\r\ng"
    assert escape(nasty) == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X0D\\\\X0A\\g"
    text = f"MSH|^~\\&|A|B|C|D|1||ACK|1|P|2.4\rMSA|AA|1|{escape(nasty)}|x\r"
    assert value("MSA-3", text) == nasty.strip()
    assert value("MSA-4", text) == "x"
    assert escape("张三") == "张三"


def test_charset_names() -> None:
    assert codec_for("GB 18030-2000") == codec_for("GB18030") == "gb18030"
    assert codec_for("UNICODE UTF-8") == "utf-8" and codec_for("8859/1") == "iso8859-1"
    assert codec_for("GBK") == "gbk"
    assert hl7_name("GB18030") == "GB 18030-2000" and hl7_name("gbk") is None
    for bad in ("UNICODE UTF-16", "utf-16", "klingon"):
        with pytest.raises(CharsetError):
            codec_for(bad)


def test_msh18_is_found_on_bytes_even_after_a_trail_byte_that_looks_like_a_separator() -> None:
    # 亅 is 0x81 0x7C in GB18030: a byte-wise split of this MSH shifts every field after MSH-3.
    message = "MSH|^~\\&|亅医院|B|C|D|20250314||ACK^P03|1|P|2.4|||||CHN|GB 18030-2000\rMSA|AA|1|亅\r"
    data = message.encode("gb18030")
    assert b"\x81|" in data
    text, codec, declared = decode(data, "UTF-8")
    assert (text, codec, declared) == (message, "gb18030", "GB 18030-2000")
    assert value("MSA-3", text) == "亅" and value("MSH-3", text) == "亅医院"


def test_no_msh18_uses_the_peer_default_and_bad_bytes_are_a_clear_error() -> None:
    message = "MSH|^~\\&|A|B|C|D|20250314||ACK^P03|1|P|2.4\nMSA|AA|1|张三\n"
    assert decode(message.encode("gb18030"), "GB18030")[1:] == ("gb18030", None)
    assert decode(message.encode("utf-8"), "UTF-8")[0] == message.replace("\n", "\r")
    with pytest.raises(UndecodableMessage, match="not valid gb18030") as err:
        decode(b"MSH|^~\\&|A|B|C|D|1||ACK|1|P|2.4|||||CHN|GB 18030-2000\rMSA|AA|1|\x81\x20\r", "UTF-8")
    assert err.value.charset == "GB 18030-2000"
    with pytest.raises(UndecodableMessage, match="MSH-18"):
        decode(b"MSH|^~\\&|A|B|C|D|1||ACK|1|P|2.4|||||CHN|KLINGON\rMSA|AA|1\r", "UTF-8")
    with pytest.raises(UndecodableMessage, match="MSH segment"):
        decode(b"PID|1\r", "UTF-8")


def test_line_endings_are_normalised() -> None:
    for sep in ("\r", "\n", "\r\n"):
        text = sep.join(["MSH|^~\\&|A|B|C|D|1||ACK|1|P|2.4", "MSA|AA|1"])
        assert decode(text.encode(), "ASCII")[0] == "MSH|^~\\&|A|B|C|D|1||ACK|1|P|2.4\rMSA|AA|1\r"


def test_empty_and_non_hl7_replies_are_mapping_errors() -> None:
    for bad in ("", "   ", "<Response/>", "MSH"):
        with pytest.raises(MappingError):
            X.parse(bad)


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_published_samples_parse_and_reserialise_byte_for_byte(fixture: Path) -> None:
    """The v2.8 samples arrive with LF segment ends (see SOURCES.md); their CR form is what MLLP carries."""
    assert FIXTURES, f"no HL7 samples under {FIXTURES}"
    raw = fixture.read_bytes()
    wire = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r").rstrip(b"\r") + b"\r"
    text, codec, _ = decode(raw, "ASCII")
    assert text.encode(codec) == wire
    assert str(hl7.parse(text)).encode(codec) == wire
    record = X.parse(raw)
    message_type = fixture.stem.rsplit("-", 1)[0].replace("-", "^")
    assert f"{record.value(X.compile_path('MSH-9.1'))}^{record.value(X.compile_path('MSH-9.2'))}" == message_type
    assert record.value(X.compile_path("MSH-12")) == "2.8"
    assert record.value(X.compile_path("PID-3")) is not None
