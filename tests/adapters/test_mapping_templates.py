import pytest
from lxml import etree

from adapters.mapping.errors import MappingError
from adapters.mapping.filters import CodeTables, Filters
from adapters.mapping.templates import RequestTemplate, TemplateEnvironment


@pytest.fixture
def env() -> TemplateEnvironment:
    return TemplateEnvironment(Filters(CodeTables({"pay_mode": {"wechat": "WX"}})), {"operator": "BRIDGE"})


def render(env: TemplateEnvironment, source: str, **params: object) -> str:
    return RequestTemplate(env, {"inXml": source}, 'operations."x.y".request').render(params)["inXml"]


def test_values_are_xml_escaped(env: TemplateEnvironment) -> None:
    out = render(env, "<Request><Reason>{{ reason }}</Reason></Request>", reason="<&> \"quoted\" 'x'")
    assert etree.fromstring(out).findtext("Reason") == "<&> \"quoted\" 'x'"
    assert "<&>" not in out


def test_autoescape_can_be_switched_off_explicitly(env: TemplateEnvironment) -> None:
    out = render(env, "{% autoescape false %}{{ raw }}{% endautoescape %}", raw="<A/>")
    assert out == "<A/>"


def test_filters_loops_and_vars(env: TemplateEnvironment) -> None:
    source = (
        "<R><Amount>{{ amount_fen | yuan }}</Amount><PayMode>{{ channel | code('pay_mode') }}</PayMode>"
        "<Time>{{ paid_at | datetime }}</Time><Op>{{ vars.operator }}</Op>"
        "<Bills>{% for b in bill_nos %}<BillNo>{{ b }}</BillNo>{% endfor %}</Bills></R>"
    )
    out = render(env, source, amount_fen=1250, channel="wechat", paid_at="2024-05-01T02:00:00Z", bill_nos=["B1", "B2"])
    assert out == (
        "<R><Amount>12.50</Amount><PayMode>WX</PayMode><Time>2024-05-01 10:00:00</Time><Op>BRIDGE</Op>"
        "<Bills><BillNo>B1</BillNo><BillNo>B2</BillNo></Bills></R>"
    )


def test_none_renders_as_empty_text(env: TemplateEnvironment) -> None:
    assert render(env, "<LockId>{{ lock_id }}</LockId>", lock_id=None) == "<LockId></LockId>"


def test_a_missing_field_is_an_error_naming_it(env: TemplateEnvironment) -> None:
    with pytest.raises(MappingError, match=r"request\.inXml: undefined value: 'trade_no' is undefined"):
        render(env, "<TradeNo>{{ trade_no }}</TradeNo>")


def test_the_sandbox_blocks_attribute_tricks(env: TemplateEnvironment) -> None:
    with pytest.raises(MappingError, match=r"not allowed|unsafe"):
        render(env, "{{ ''.__class__ }}")
    with pytest.raises(MappingError):
        render(env, "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(MappingError):
        render(env, "{{ items.append(1) }}", items=[])


def test_an_unknown_code_is_an_error_naming_the_table(env: TemplateEnvironment) -> None:
    with pytest.raises(MappingError, match="code table 'pay_mode' has no entry for 'cash'"):
        render(env, "{{ channel | code('pay_mode') }}", channel="cash")


def test_compile_reports_syntax_errors_and_unknown_tables(env: TemplateEnvironment) -> None:
    with pytest.raises(ValueError, match="line 2"):
        env.compile("<A>\n{{ x }</A>")
    with pytest.raises(ValueError, match=r"(?i)no filter named 'cents'"):
        env.compile("{{ x | cents }}")
    with pytest.raises(ValueError, match="code table 'gender'"):
        env.compile("{{ x | code('gender') }}")
