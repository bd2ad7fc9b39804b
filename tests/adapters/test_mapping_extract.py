import pytest

from adapters.base import PermanentError, RetryableError
from adapters.mapping.errors import MappingError
from adapters.mapping.extract import FieldRule, ListRule, ReplyRule, XmlExtractor
from adapters.mapping.filters import CodeTables, Filters

X = XmlExtractor()
FILTERS = Filters(CodeTables({"pay_mode": {"wechat": "WX", "alipay": "ZFB"}}))


def rule(**kwargs: object) -> ReplyRule:
    defaults: dict[str, object] = {
        "success": X.compile_rule("ResultCode = '0'"),
        "error_code": X.compile_path("ResultCode"),
        "error_message": X.compile_path("ResultMsg"),
    }
    return ReplyRule(**{**defaults, **kwargs})  # type: ignore[arg-type]


def field(name: str, path: str, **kwargs: object) -> FieldRule:
    return FieldRule(name, X.compile_path(path), path, **kwargs)  # type: ignore[arg-type]


def apply(r: ReplyRule, raw: str | bytes) -> dict:
    return r.apply(X.parse(raw), FILTERS, raw=raw if isinstance(raw, str) else None)


GBK_REPLY = (
    '<?xml version="1.0" encoding="GBK"?>'
    "<Response><ResultCode>0</ResultCode><ResultMsg>成功</ResultMsg>"
    "<Patient><Name>张三</Name><BirthDate>1985-03-12</BirthDate></Patient></Response>"
)


def test_gbk_declared_xml_in_a_python_string() -> None:
    r = rule(fields=(field("name", "Patient/Name"), field("birth_date", "Patient/BirthDate", kind="date")))
    assert apply(r, GBK_REPLY) == {"name": "张三", "birth_date": "1985-03-12"}


def test_gbk_bytes_honour_their_declaration() -> None:
    r = rule(fields=(field("name", "Patient/Name"),))
    assert apply(r, GBK_REPLY.encode("gbk")) == {"name": "张三"}


def test_typed_fields_constants_defaults_and_codes() -> None:
    raw = (
        "<Response><ResultCode>0</ResultCode><Amount>12.5</Amount><Found>1</Found><Count>3</Count>"
        "<Time>2024-05-01 10:00:00</Time><PayMode>ZFB</PayMode><Empty/><Blank>  </Blank></Response>"
    )
    r = rule(
        fields=(
            field("amount_fen", "Amount", kind="fen"),
            field("found", "Found", kind="bool"),
            field("count", "Count", kind="int"),
            field("count2", "count(*)", kind="int"),
            field("time", "Time", kind="datetime"),
            field("channel", "PayMode", code="pay_mode"),
            field("empty", "Empty"),
            field("blank", "Blank", default="x"),
            field("absent", "Nope"),
            FieldRule("unlocked", const=True),
        )
    )
    assert apply(r, raw) == {
        "amount_fen": 1250,
        "found": True,
        "count": 3,
        "count2": 8,
        "time": "2024-05-01T10:00:00+08:00",
        "channel": "alipay",
        "empty": None,
        "blank": "x",
        "absent": None,
        "unlocked": True,
    }


def test_lists() -> None:
    raw = (
        "<Response><ResultCode>0</ResultCode><Bills>"
        "<Bill><BillNo>B1</BillNo><Amount>1.00</Amount></Bill>"
        "<Bill><BillNo>B2</BillNo><Amount>0.05</Amount></Bill>"
        "</Bills></Response>"
    )
    bills = ListRule(
        "bills", X.compile_path("Bills/Bill"), (field("bill_no", "BillNo"), field("amount_fen", "Amount", kind="fen"))
    )
    assert apply(rule(lists=(bills,)), raw) == {
        "bills": [{"bill_no": "B1", "amount_fen": 100}, {"bill_no": "B2", "amount_fen": 5}]
    }
    assert apply(rule(lists=(bills,)), "<Response><ResultCode>0</ResultCode></Response>") == {"bills": []}


def test_error_in_a_list_item_names_the_item() -> None:
    raw = (
        "<Response><ResultCode>0</ResultCode><Bill><Amount>1</Amount></Bill><Bill><Amount>x</Amount></Bill></Response>"
    )
    bills = ListRule("bills", X.compile_path("Bill"), (field("amount_fen", "Amount", kind="fen"),))
    with pytest.raises(MappingError, match=r"bills\[1\]: field amount_fen \('Amount'\): fen: 'x'"):
        apply(rule(lists=(bills,)), raw)


def test_his_refusal_carries_the_his_code_and_message() -> None:
    raw = "<Response><ResultCode>2002</ResultCode><ResultMsg>账单已缴费</ResultMsg></Response>"
    with pytest.raises(PermanentError) as err:
        apply(rule(), raw)
    assert (err.value.code, err.value.message) == ("2002", "账单已缴费")
    assert err.value.raw == raw


def test_retryable_codes_and_answers() -> None:
    busy = "<Response><ResultCode>8001</ResultCode><ResultMsg>系统忙</ResultMsg></Response>"
    with pytest.raises(RetryableError) as err:
        apply(rule(retryable_codes=frozenset({"8001"})), busy)
    assert err.value.code == "8001"
    missing = "<Response><ResultCode>1001</ResultCode><ResultMsg>患者不存在</ResultMsg></Response>"
    assert apply(rule(answers={"1001": {"found": False}}), missing) == {"found": False}


def test_refusal_without_an_error_code() -> None:
    with pytest.raises(PermanentError) as err:
        apply(rule(error_code=None, error_message=None), "<Response><ResultCode>1</ResultCode></Response>")
    assert err.value.code == "his_error"


def test_unmappable_replies() -> None:
    ok = rule(fields=(field("receipt_no", "ReceiptNo", required=True),))
    with pytest.raises(MappingError, match="no value at 'ReceiptNo'"):
        apply(ok, "<Response><ResultCode>0</ResultCode></Response>")
    with pytest.raises(MappingError, match="not well-formed"):
        apply(ok, "<Response><ResultCode>0</ResultCode>")
    with pytest.raises(MappingError, match="empty"):
        apply(ok, "  ")
    with pytest.raises(MappingError, match="matched 2 nodes"):
        apply(rule(fields=(field("x", "A"),)), "<Response><ResultCode>0</ResultCode><A>1</A><A>2</A></Response>")
    with pytest.raises(MappingError, match=r"pay_mode.*'XJ'"):
        apply(
            rule(fields=(field("channel", "P", code="pay_mode"),)),
            "<Response><ResultCode>0</ResultCode><P>XJ</P></Response>",
        )


def test_doctypes_and_entities_are_refused() -> None:
    raw = (
        '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        "<Response><ResultCode>0</ResultCode><Name>&xxe;</Name></Response>"
    )
    with pytest.raises(MappingError, match="DOCTYPE"):
        apply(rule(fields=(field("name", "Name"),)), raw)


def test_namespaced_replies() -> None:
    x = XmlExtractor({"h": "urn:his"})
    r = ReplyRule(success=x.compile_rule("h:Code = 'AA'"), fields=(FieldRule("v", x.compile_path("h:V"), "h:V"),))
    record = x.parse('<h:R xmlns:h="urn:his"><h:Code>AA</h:Code><h:V>1</h:V></h:R>')
    assert r.apply(record, FILTERS) == {"v": "1"}


def test_invalid_paths_are_reported_at_compile_time() -> None:
    with pytest.raises(ValueError, match="xpath is invalid"):
        X.compile_path("Patient/[Name")
