from pathlib import Path

import pytest

from adapters.profile import ProfileError, load_profile
from adapters.soap import SoapAdapter
from bridge import catalog

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_PROFILE = ROOT / "config" / "profiles" / "sandbox-soap.toml"
SANDBOX_WSDL = ROOT / "sandbox" / "his" / "HisService.wsdl"

MINIMAL = """
[profile]
name = "mini"
protocol = "soap"

[soap]
wsdl = "his.wsdl"
endpoint = "http://10.0.0.5:8080/his/HisService.asmx"

[code_tables.pay_mode]
wechat = "WX"

[operations."charge.commit"]
call = "CommitCharge"
[operations."charge.commit".request]
inXml = "<Request><TradeNo>{{ trade_no }}</TradeNo><PayMode>{{ channel | code('pay_mode') }}</PayMode></Request>"
[operations."charge.commit".response]
result = "CommitChargeResult"
success = "ResultCode = '0'"
error_code = "ResultCode"
[operations."charge.commit".response.fields]
receipt_no = { xpath = "ReceiptNo", required = true }
"""


def write(tmp_path: Path, text: str, name: str = "mini.toml") -> Path:
    (tmp_path / "his.wsdl").write_bytes(SANDBOX_WSDL.read_bytes())
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path, **kwargs: object):  # type: ignore[no-untyped-def]
    return load_profile(path, catalog.OPERATIONS, read_operations=catalog.READ_OPERATIONS, **kwargs)  # type: ignore[arg-type]


def problems(path: Path, **kwargs: object) -> str:
    with pytest.raises(ProfileError) as err:
        load(path, **kwargs)
    return str(err.value)


def test_the_sandbox_profile_binds_every_catalog_operation() -> None:
    profile = load(SANDBOX_PROFILE, environ={})
    assert profile.name == "sandbox-soap"
    assert profile.protocol == "soap"
    assert profile.path == SANDBOX_PROFILE
    assert profile.operations == frozenset(catalog.OPERATIONS)
    assert profile.soap.endpoint == "http://127.0.0.1:8089/his/HisService.asmx"
    assert profile.bindings["charge.commit"].write and not profile.bindings["trade.check"].write
    adapter = profile.build_adapter()
    assert isinstance(adapter, SoapAdapter)
    assert adapter.endpoint == "http://127.0.0.1:8089"
    assert adapter.operations() == frozenset(catalog.OPERATIONS)


def test_base_url_from_the_environment_or_an_override() -> None:
    env = {"HIS_SANDBOX_URL": "http://his.example:9000"}
    assert load(SANDBOX_PROFILE, environ=env).soap.wsdl == "http://his.example:9000/his/HisService.asmx?wsdl"
    profile = load(SANDBOX_PROFILE, environ=env, overrides={"soap.base_url": "http://127.0.0.1:54321/"})
    assert profile.soap.endpoint == "http://127.0.0.1:54321/his/HisService.asmx"
    assert profile.build_adapter().endpoint == "http://127.0.0.1:54321"


def test_minimal_profile_resolves_the_wsdl_next_to_it(tmp_path: Path) -> None:
    profile = load(write(tmp_path, MINIMAL))
    assert profile.soap.wsdl == str(tmp_path / "his.wsdl")
    assert profile.operations == frozenset({"charge.commit"})
    assert profile.build_adapter().endpoint == "http://10.0.0.5:8080"


def test_a_typo_names_file_operation_and_key(tmp_path: Path) -> None:
    text = problems(write(tmp_path, MINIMAL.replace('success = "', 'sucess = "')))
    assert 'mini.toml: operations."charge.commit".response.sucess: unknown key (a typo?)' in text
    assert 'mini.toml: operations."charge.commit".response.success: is required' in text


def test_a_bad_xpath_names_the_field(tmp_path: Path) -> None:
    text = problems(write(tmp_path, MINIMAL.replace('xpath = "ReceiptNo"', 'xpath = "Receipt[No"')))
    assert text.startswith('mini.toml: operations."charge.commit".response.fields.receipt_no.xpath: xpath is invalid')


def test_a_bad_success_rule(tmp_path: Path) -> None:
    text = problems(write(tmp_path, MINIMAL.replace("ResultCode = '0'", "ResultCode = = '0'")))
    assert 'operations."charge.commit".response.success: xpath is invalid' in text


def test_a_bad_template_names_the_parameter_and_line(tmp_path: Path) -> None:
    text = problems(write(tmp_path, MINIMAL.replace("{{ trade_no }}", "{{ trade_no }")))
    assert 'mini.toml: operations."charge.commit".request.inXml: template error on line 1' in text


def test_a_template_using_an_undefined_code_table(tmp_path: Path) -> None:
    text = problems(write(tmp_path, MINIMAL.replace("code('pay_mode')", "code('paymode')")))
    assert "request.inXml: uses code table 'paymode'" in text


def test_an_unknown_operation(tmp_path: Path) -> None:
    text = problems(write(tmp_path, MINIMAL.replace('"charge.commit"', '"charge.comit"')))
    assert 'mini.toml: operations."charge.comit": unknown operation' in text
    # without the catalog the loader cannot tell, and accepts the name
    assert load_profile(write(tmp_path, MINIMAL.replace('"charge.commit"', '"charge.comit"'))).operations == {
        "charge.comit"
    }


def test_field_needs_exactly_one_source_and_known_code_table(tmp_path: Path) -> None:
    text = problems(write(tmp_path, MINIMAL + 'x = { xpath = "A", value = 1 }\n'))
    assert "response.fields.x: Value error, give exactly one of xpath" in text
    text = problems(write(tmp_path, MINIMAL + 'y = { xpath = "B", code = "nope" }\nz = "C[" \n'))
    assert "response.fields.z.xpath: xpath is invalid" in text
    assert "response.fields.y.code: no code table named 'nope'" in text


def test_unknown_type(tmp_path: Path) -> None:
    text = problems(write(tmp_path, MINIMAL + 'amount_fen = { xpath = "A", type = "money" }\n'))
    assert "response.fields.amount_fen.type:" in text


def test_environment_references(tmp_path: Path) -> None:
    text = MINIMAL.replace("[soap]\n", '[soap]\nusername = "bridge"\npassword = "${env:HIS_PW}"\n')
    path = write(tmp_path, text)
    assert "mini.toml: soap.password: environment variable HIS_PW is not set" in problems(path, environ={})
    assert load(path, environ={"HIS_PW": "s3cret"}).soap.password == "s3cret"
    outside = write(tmp_path, MINIMAL.replace("<TradeNo>", "<TradeNo>${env:HOME}"))
    assert "environment references are only allowed in [soap]" in problems(outside, environ={"HOME": "/"})


def test_toml_syntax_and_missing_files(tmp_path: Path) -> None:
    assert "mini.toml: not valid TOML" in problems(write(tmp_path, MINIMAL + "[[[\n"))
    assert "cannot read the profile" in problems(tmp_path / "absent.toml")
    assert "soap.wsdl: 'nope.wsdl' is neither an http(s) URL nor a file" in problems(
        write(tmp_path, MINIMAL.replace('wsdl = "his.wsdl"', 'wsdl = "nope.wsdl"'))
    )


def test_unsupported_protocol(tmp_path: Path) -> None:
    text = problems(write(tmp_path, MINIMAL.replace('protocol = "soap"', 'protocol = "corba"')))
    assert "profile.protocol:" in text


def test_protocol_needs_its_own_section_and_no_other(tmp_path: Path) -> None:
    text = problems(write(tmp_path, MINIMAL.replace('protocol = "soap"', 'protocol = "hl7"')))
    assert "needs a [hl7] section" in text
