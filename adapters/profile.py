"""HIS profiles: one TOML file per hospital HIS binding each catalog operation to a HIS call.

A profile is written by a HIS vendor engineer, not by us, so loading it is strict and every complaint names
the file, the operation and the field (``sandbox-soap.toml: operations."charge.commit".response.fields.
receipt_no.xpath: xpath is invalid: …``). Unknown keys are refused (a typo must not silently drop a mapping),
templates and paths are compiled at load time, and operation names are checked against the catalog the
bridge passes in (``adapters`` never imports ``bridge``).

Layout (see ``config/profiles/sandbox-soap.toml`` for a commented example)::

    [profile]        name, protocol ("soap", "hl7", "dbproc"), description, timezone (HIS local zone)
    [soap]           base_url, wsdl, endpoint, binding, wsdl_cache, timeouts, max_connections,
                     username/password (HTTP basic auth), verify_tls, ca_file
    [hl7] [dbproc]   the other protocols' settings, validated by their adapter modules (``PROTOCOLS``)
    [vars]           constants for templates, as {{ vars.NAME }} (operator id, terminal id, hospital code)
    [code_tables.T]  our value = "HIS code"; templates use {{ x | code("T") }}, reply fields code = "T"
    [operations."catalog.name"]
        call         the HIS call (SOAP operation name)
        request      parameter name = Jinja2 template (sandboxed, XML-escaped, StrictUndefined)
        response     result, namespaces, success, error_code, error_message, retryable_codes, answers,
                     fault_in_doubt, fields (name = "xpath" or {xpath|value, type, format, code, required,
                     default}), lists (name = {xpath, fields})

Stored procedures (``protocol = "dbproc"``, see ``config/profiles/dbproc-*.toml``) read ``call`` as the
procedure name (checked against an SQL identifier pattern) and ``request`` as its parameters IN ORDER (TOML
tables keep their order), always bound, never spliced into SQL. They add, per operation or per step::

        types        parameter = str | int | decimal | date | datetime (how the rendered text is bound;
                     empty text binds NULL)
        routine      "procedure" | "function" (the default depends on [dbproc] dialect)
        out          OUT parameter names, read back as out.NAME (MariaDB: CALL p(?, @x); SELECT @x)
        refcursors   true: the function returns refcursors, each fetched as one result set (PostgreSQL)
        steps        instead of call/request: [{call, request, types, out, routine, refcursors, repeat_over,
                     success, error_code, error_message, save}, …], run in order on one connection in one
                     transaction; repeat_over = "bill_nos" runs a step once per item ({{ item }}); save =
                     {session = "session_id"} keeps a column for later steps ({{ saved.session }}); a step's
                     success rule failing stops the sequence and rolls it back; response reads the last step
        session_key  the input field whose calls never interleave (default trade_no)

Their reply paths are column names (``status``, ``set[2].amount``, ``set[-1].status``, ``out.out_xml``; lists
take ``set[N]``) and success rules read like ``status = 'T'`` or ``flag in T,1`` (``adapters.mapping.rows``).
With ``response.format = "xml"`` and ``response.result`` naming the column (or ``out.NAME``) that holds an XML
document, the reply paths are XPath into that document, as for SOAP.

Only the protocol section's string values may reference the environment, as ``${env:NAME}`` or ``${env:NAME:-default}``,
so that secrets stay out of the repository and out of dry-run previews. ``overrides`` (dotted keys such as
``soap.base_url``) replace values after that, which is how a test points a profile at a sandbox on a random
port. When ``base_url`` is set, a ``wsdl`` or ``endpoint`` starting with ``/`` is a path on that server; any
other non-URL ``wsdl`` (and ``wsdl_cache``, ``ca_file``) is a file path relative to the profile file; write
``file:///abs/path.wsdl`` for an absolute WSDL path while ``base_url`` is set.
"""

from __future__ import annotations

import importlib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from adapters.mapping.binding import OperationBinding, StepBinding
from adapters.mapping.extract import Extractor, FieldRule, ListRule, ReplyRule, XmlExtractor
from adapters.mapping.filters import FIELD_TYPES, CodeTables, Filters
from adapters.mapping.templates import RequestTemplate, TemplateEnvironment

if TYPE_CHECKING:
    from adapters.base import Adapter


class ProfileError(Exception):
    """A profile that cannot be used; the message lists every problem, one per line."""

    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(f"{file}: {problem}" for problem in problems))


# --- the TOML schema ---------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Scalar = str | int | bool


class ProfileMeta(_Model):
    name: str = Field(min_length=1, max_length=64)
    protocol: Literal["soap", "hl7", "dbproc"]
    description: str | None = None
    timezone: str = "Asia/Shanghai"


class SoapSettings(_Model):
    base_url: str | None = None
    wsdl: str = Field(min_length=1)
    endpoint: str | None = None
    binding: str | None = None
    wsdl_cache: str | None = None
    operation_timeout_s: float = Field(10.0, gt=0, le=600)
    connect_timeout_s: float = Field(3.0, gt=0, le=120)
    max_connections: int = Field(10, ge=1, le=200)
    username: str | None = None
    password: str | None = None
    verify_tls: bool = True
    ca_file: str | None = None


class FieldSpec(_Model):
    xpath: str | None = None
    value: Scalar | None = None
    type: Literal["str", "int", "fen", "bool", "date", "datetime"] = "str"
    format: str | None = None
    code: str | None = None
    required: bool = False
    default: Scalar | None = None

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        if (self.xpath is None) == (self.value is None):
            raise ValueError("give exactly one of xpath (read from the reply) or value (a constant)")
        return self


def _field_shorthand(value: Any) -> Any:
    return {"xpath": value} if isinstance(value, str) else value


FieldMap = dict[str, Annotated[FieldSpec, BeforeValidator(_field_shorthand)]]


class ListSpec(_Model):
    xpath: str
    fields: FieldMap


class ResponseSpec(_Model):
    format: Literal["xml", "hl7", "rows"] | None = None
    """How the reply is read; by default the protocol's own (SOAP: xml, HL7: hl7, stored procedures: rows)."""
    result: str | None = None
    namespaces: dict[str, str] = {}
    success: str
    error_code: str | None = None
    error_message: str | None = None
    retryable_codes: list[str] = []
    answers: dict[str, dict[str, Scalar]] = {}
    fault_in_doubt: bool = False
    fields: FieldMap = {}
    lists: dict[str, ListSpec] = {}


ParamType = Literal["str", "int", "decimal", "date", "datetime"]
"""How a stored-procedure parameter is bound: the rendered text converted exactly (``decimal`` for yuan
amounts, ``date``/``datetime`` from the ``date``/``datetime`` filters' text); empty text binds SQL NULL."""


class CallOptions(_Model):
    """Stored-procedure details of one call (``[dbproc]`` profiles only)."""

    types: dict[str, ParamType] = {}
    out: list[str] = []
    routine: Literal["procedure", "function"] | None = None
    refcursors: bool = False


class StepSpec(CallOptions):
    """One call of a multi-call sequence; the operation's ``response`` reads the last step's reply."""

    call: str = Field(min_length=1)
    request: dict[str, str] = {}
    repeat_over: str | None = None
    success: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    save: dict[str, str] = {}


class OperationSpec(CallOptions):
    call: str | None = Field(None, min_length=1)
    request: dict[str, str] = {}
    steps: list[StepSpec] = []
    session_key: str | None = None
    response: ResponseSpec

    @model_validator(mode="after")
    def _call_or_steps(self) -> OperationSpec:
        if (self.call is None) == (not self.steps):
            raise ValueError("give exactly one of call (one HIS call) or steps (a sequence of calls)")
        if self.steps and (self.request or self.types or self.out or self.routine or self.refcursors):
            raise ValueError("with steps, request/types/out/routine/refcursors belong to each step")
        return self

    def dbproc_only(self) -> list[str]:
        """The keys set that only stored procedures understand."""
        keys = [k for k in ("types", "out", "routine", "refcursors", "steps", "session_key") if getattr(self, k)]
        return keys


class ProfileSpec(_Model):
    profile: ProfileMeta
    soap: SoapSettings | None = None
    hl7: dict[str, Any] | None = None
    """Validated by the HL7 adapter's own settings model (see ``PROTOCOLS``)."""
    dbproc: dict[str, Any] | None = None
    """Validated by the stored-procedure adapter's own settings model (see ``PROTOCOLS``)."""
    vars: dict[str, Scalar] = {}
    code_tables: dict[str, dict[str, str]] = {}
    operations: dict[str, OperationSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _protocol_section(self) -> ProfileSpec:
        protocol = self.profile.protocol
        if getattr(self, protocol) is None:
            raise ValueError(f"protocol {protocol!r} needs a [{protocol}] section")
        others = [name for name in PROTOCOLS if name != protocol and getattr(self, name) is not None]
        if others:
            raise ValueError(f"protocol {protocol!r} takes no [{'], ['.join(others)}] section")
        if protocol != "dbproc":
            for name, op in self.operations.items():
                if keys := op.dbproc_only():
                    raise ValueError(f"operations.{_key(name)}: {', '.join(keys)} apply to protocol 'dbproc' only")
        return self


# --- protocols ---------------------------------------------------------------------------------------------


def _import(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True, kw_only=True)
class ProtocolSupport:
    """What the loader needs to know of one protocol; its adapter and settings are imported only when used,
    so a SOAP-only installation never imports pyodbc."""

    adapter: str
    """``module:Class`` of the adapter, constructed with the loaded :class:`Profile`."""
    reply_format: str
    """How replies are read: a key of ``EXTRACTORS``."""
    settings: str | None = None
    """``module:Model`` validating the protocol's section; it may define ``resolve(base_dir, problems)``
    returning a copy with paths made absolute. SOAP's model lives here."""
    escape: str | None = None
    """How templates escape values: None is XML, ``"verbatim"`` none (bound SQL parameters), or
    ``module:function`` applied to each value."""
    check: str | None = None
    """``module:function(OperationSpec) -> list[str]``: the protocol's own rules for one operation (SQL
    identifiers for stored procedures), each problem relative to the operation."""


PROTOCOLS: dict[str, ProtocolSupport] = {
    "soap": ProtocolSupport(adapter="adapters.soap:SoapAdapter", reply_format="xml"),
    "hl7": ProtocolSupport(
        adapter="adapters.hl7:Hl7Adapter",
        reply_format="hl7",
        settings="adapters.hl7:Hl7Settings",
        escape="adapters.mapping.hl7:escape",
    ),
    "dbproc": ProtocolSupport(
        adapter="adapters.dbproc:DbprocAdapter",
        reply_format="rows",
        settings="adapters.dbproc:DbprocSettings",
        escape="verbatim",
        check="adapters.dbproc:check_operation",
    ),
}

EXTRACTORS: dict[str, str] = {
    "xml": "adapters.mapping.extract:XmlExtractor",
    "hl7": "adapters.mapping.hl7:Hl7Extractor",
    "rows": "adapters.mapping.rows:RowExtractor",
}
"""Reply formats: ``module:Class`` constructed with the operation's :class:`ResponseSpec`'s namespaces."""


def make_extractor(fmt: str, response: ResponseSpec) -> Extractor:
    if fmt == "xml":
        return XmlExtractor(response.namespaces)
    return _import(EXTRACTORS[fmt])()


# --- the loaded profile ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """A validated profile, ready to build its adapter."""

    name: str
    protocol: str
    path: Path
    spec: ProfileSpec
    bindings: Mapping[str, OperationBinding]
    filters: Filters
    settings: BaseModel | None = None
    """The protocol section (``[soap]``, ``[hl7]``, ``[dbproc]``), validated, with paths resolved."""
    operations: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "operations", frozenset(self.bindings))

    @property
    def soap(self) -> SoapSettings:
        """The ``[soap]`` settings with environment references, overrides and paths resolved."""
        if self.spec.soap is None:
            raise ValueError(f"profile {self.name!r} has no [soap] section")
        return self.spec.soap

    def build_adapter(self) -> Adapter:
        adapter_class = _import(PROTOCOLS[self.protocol].adapter)
        return adapter_class(self)


def load_profile(
    path: str | os.PathLike[str],
    known_operations: Iterable[str] | None = None,
    *,
    read_operations: Iterable[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Profile:
    """Parse and validate one profile.

    ``known_operations``: the catalog's operation names (the bridge passes ``catalog.OPERATIONS``); bindings
    for other names are errors. ``read_operations``: the catalog's reads; every other operation is treated
    as a write, so an unreadable reply to it is in doubt. ``overrides``: dotted keys replacing values after
    environment substitution, e.g. ``{"soap.base_url": "http://127.0.0.1:54321"}`` or
    ``{'operations."charge.commit".response.fault_in_doubt': True}``.
    """
    file = Path(path)
    label = file.name
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(label, [f"cannot read the profile: {exc.strerror or exc}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(label, [f"not valid TOML: {exc}"]) from None

    problems: list[str] = []
    raw = _substitute_env(raw, environ if environ is not None else os.environ, problems)
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    _refuse_env_outside_sections(raw, problems)
    if problems:
        raise ProfileError(label, problems)
    try:
        spec = ProfileSpec.model_validate(raw)
    except ValidationError as exc:
        raise ProfileError(label, [_pydantic_problem(error) for error in exc.errors()]) from None

    settings = _protocol_settings(spec, file.parent.resolve(), problems)
    if spec.soap is not None:
        spec = spec.model_copy(update={"soap": settings})
    try:
        tz = ZoneInfo(spec.profile.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"profile.timezone: unknown time zone {spec.profile.timezone!r}")
        tz = ZoneInfo("Asia/Shanghai")

    codes = CodeTables(spec.code_tables)
    filters = Filters(codes, tz)
    escape = PROTOCOLS[spec.profile.protocol].escape
    env = TemplateEnvironment(filters, spec.vars, _import(escape) if escape and ":" in escape else escape)
    known = frozenset(known_operations) if known_operations is not None else None
    reads = frozenset(read_operations or ())
    bindings: dict[str, OperationBinding] = {}
    for name, op in spec.operations.items():
        where = f"operations.{_key(name)}"
        if known is not None and name not in known:
            problems.append(f"{where}: unknown operation (the catalog has: {', '.join(sorted(known))})")
            continue
        fmt = op.response.format or PROTOCOLS[spec.profile.protocol].reply_format
        check = PROTOCOLS[spec.profile.protocol].check
        if check is not None:
            problems.extend(f"{where}.{problem}" for problem in _import(check)(op))
        binding = _compile_operation(name, op, where, env, filters, codes, name not in reads, problems, fmt)
        if binding is not None:
            bindings[name] = binding
    if problems:
        raise ProfileError(label, problems)
    return Profile(spec.profile.name, spec.profile.protocol, file, spec, bindings, filters, settings)


def _protocol_settings(spec: ProfileSpec, base_dir: Path, problems: list[str]) -> BaseModel | None:
    protocol = spec.profile.protocol
    if protocol == "soap":
        assert spec.soap is not None
        return _resolve_soap(spec.soap, base_dir, problems)
    support = PROTOCOLS[protocol]
    assert support.settings is not None
    model = _import(support.settings)
    try:
        settings = model.model_validate(getattr(spec, protocol))
    except ValidationError as exc:
        problems.extend(_pydantic_problem({**e, "loc": (protocol, *e["loc"])}) for e in exc.errors())
        return None
    resolve = getattr(settings, "resolve", None)
    return resolve(base_dir, problems) if resolve is not None else settings


# --- compiling one operation -------------------------------------------------------------------------------


def _compile_operation(
    name: str,
    op: OperationSpec,
    where: str,
    env: TemplateEnvironment,
    filters: Filters,
    codes: CodeTables,
    write: bool,
    problems: list[str],
    fmt: str = "xml",
) -> OperationBinding | None:
    before = len(problems)
    sources: dict[str, str] = {}
    for param, source in op.request.items():
        try:
            env.compile(source)
            sources[param] = source
        except ValueError as exc:
            problems.append(f"{where}.request.{_key(param)}: {exc}")

    response = op.response
    rwhere = f"{where}.response"
    extractor = make_extractor(fmt, response)

    def compile_path(path: str, at: str) -> Any:
        try:
            return extractor.compile_path(path)
        except ValueError as exc:
            problems.append(f"{at}: {exc}")
            return None

    try:
        success = extractor.compile_rule(response.success)
    except ValueError as exc:
        problems.append(f"{rwhere}.success: {exc}")
        success = None
    error_code = compile_path(response.error_code, f"{rwhere}.error_code") if response.error_code else None
    error_message = compile_path(response.error_message, f"{rwhere}.error_message") if response.error_message else None
    fields = _compile_fields(response.fields, f"{rwhere}.fields", compile_path, codes, problems)
    lists = []
    for list_name, spec in response.lists.items():
        lwhere = f"{rwhere}.lists.{_key(list_name)}"
        items = compile_path(spec.xpath, f"{lwhere}.xpath")
        item_fields = _compile_fields(spec.fields, f"{lwhere}.fields", compile_path, codes, problems)
        lists.append(ListRule(list_name, items, item_fields))
    clash = set(response.fields) & set(response.lists)
    if clash:
        problems.append(f"{rwhere}: {', '.join(sorted(clash))} defined both as a field and as a list")
    if (response.answers or response.retryable_codes) and response.error_code is None:
        problems.append(f"{rwhere}: answers and retryable_codes need error_code")
    if len(problems) > before:
        return None
    rule = ReplyRule(
        success=success,
        error_code=error_code,
        error_message=error_message,
        retryable_codes=frozenset(response.retryable_codes),
        answers={code: dict(values) for code, values in response.answers.items()},
        fields=fields,
        lists=tuple(lists),
    )
    steps = _compile_steps(op, where, env, codes, problems)
    if len(problems) > before:
        return None
    request = RequestTemplate(env, sources, f"{where}.request")
    extractor_: Extractor = extractor
    call = op.call or " -> ".join(step.call for step in steps)
    return OperationBinding(name, call, request, rule, extractor_, filters, write, steps)


def _compile_steps(
    op: OperationSpec, where: str, env: TemplateEnvironment, codes: CodeTables, problems: list[str]
) -> tuple[StepBinding, ...]:
    """A sequence's calls; each step's reply is a set of rows, read by its own success rule and ``save``."""
    steps = []
    for index, step in enumerate(op.steps):
        swhere = f"{where}.steps[{index}]"
        sources: dict[str, str] = {}
        for param, source in step.request.items():
            try:
                env.compile(source)
                sources[param] = source
            except ValueError as exc:
                problems.append(f"{swhere}.request.{_key(param)}: {exc}")
        extractor = make_extractor("rows", op.response)

        def compile_path(path: str, at: str, extractor: Any = extractor) -> Any:
            try:
                return extractor.compile_path(path)
            except ValueError as exc:
                problems.append(f"{at}: {exc}")
                return None

        rule = None
        if step.success is not None or step.save:
            try:
                success = extractor.compile_rule(step.success or "true")
            except ValueError as exc:
                problems.append(f"{swhere}.success: {exc}")
                success = None
            saved = {name: FieldSpec(xpath=path) for name, path in step.save.items()}
            rule = ReplyRule(
                success=success,
                error_code=compile_path(step.error_code, f"{swhere}.error_code") if step.error_code else None,
                error_message=compile_path(step.error_message, f"{swhere}.error_message")
                if step.error_message
                else None,
                retryable_codes=frozenset(op.response.retryable_codes),
                answers={},
                fields=_compile_fields(saved, f"{swhere}.save", compile_path, codes, problems),
                lists=(),
            )
        request = RequestTemplate(env, sources, f"{swhere}.request")
        steps.append(StepBinding(step.call, request, rule, step.repeat_over))
    return tuple(steps)


def _compile_fields(
    specs: Mapping[str, FieldSpec], where: str, compile_path: Any, codes: CodeTables, problems: list[str]
) -> tuple[FieldRule, ...]:
    rules = []
    for name, spec in specs.items():
        at = f"{where}.{_key(name)}"
        if spec.code is not None:
            if spec.code not in codes.names():
                problems.append(f"{at}.code: no code table named {spec.code!r}")
            elif ambiguous := codes.ambiguous(spec.code):
                problems.append(
                    f"{at}.code: table {spec.code!r} maps several values to {', '.join(ambiguous)}; "
                    "a reply cannot be read back unambiguously"
                )
        if spec.type not in FIELD_TYPES:
            problems.append(f"{at}.type: unknown type {spec.type!r}")
        path = compile_path(spec.xpath, f"{at}.xpath") if spec.xpath is not None else None
        rules.append(
            FieldRule(
                name=name,
                path=path,
                source=spec.xpath,
                const=spec.value,
                kind=spec.type,
                fmt=spec.format,
                code=spec.code,
                required=spec.required,
                default=spec.default,
            )
        )
    return tuple(rules)


# --- raw TOML helpers --------------------------------------------------------------------------------------

_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else '"' + name.replace('"', '\\"') + '"'


def _loc(parts: Iterable[Any]) -> str:
    return ".".join(_key(str(part)) for part in parts)


def _substitute_env(raw: dict[str, Any], environ: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """Resolve ``${env:NAME}`` in the protocol sections, the only place a secret (a password, a
    connection string) may come from."""
    out = dict(raw)
    for section in PROTOCOLS:
        values = raw.get(section)
        if not isinstance(values, dict):
            continue
        resolved = dict(values)
        for key, value in values.items():
            if not isinstance(value, str):
                continue

            def replace(match: re.Match[str], key: str = key, section: str = section) -> str:
                name, default = match.group(1), match.group(2)
                if name in environ:
                    return environ[name]
                if default is not None:
                    return default
                problems.append(f"{section}.{_key(key)}: environment variable {name} is not set")
                return ""

            resolved[key] = _ENV_REF.sub(replace, value)
        out[section] = resolved
    return out


def _refuse_env_outside_sections(raw: Any, problems: list[str], path: tuple[str, ...] = ()) -> None:
    if isinstance(raw, dict):
        for key, value in raw.items():
            if path == () and key in PROTOCOLS:
                continue
            _refuse_env_outside_sections(value, problems, (*path, str(key)))
    elif isinstance(raw, list):
        for index, value in enumerate(raw):
            _refuse_env_outside_sections(value, problems, (*path, str(index)))
    elif isinstance(raw, str) and "${env:" in raw:
        problems.append(f"{_loc(path)}: environment references are only allowed in [{'], ['.join(PROTOCOLS)}]")


_DOTTED_PART = re.compile(r'"([^"]*)"|([^.]+)')


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = [quoted or bare for quoted, bare in _DOTTED_PART.findall(dotted)]
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _is_url(value: str) -> bool:
    return urlsplit(value).scheme in ("http", "https")


def _resolve_soap(soap: SoapSettings, base_dir: Path, problems: list[str]) -> SoapSettings:
    base_url = soap.base_url.rstrip("/") if soap.base_url else None
    if base_url is not None and not _is_url(base_url):
        problems.append(f"soap.base_url: {soap.base_url!r} is not an http(s) URL")
        base_url = None

    def on_server(value: str) -> str | None:
        if _is_url(value):
            return value
        if base_url is not None and value.startswith("/"):
            return base_url + value
        return None

    wsdl = on_server(soap.wsdl)
    if wsdl is None:
        local = soap.wsdl.removeprefix("file://")
        wsdl_path = base_dir / local
        if not wsdl_path.is_file():
            problems.append(f"soap.wsdl: {soap.wsdl!r} is neither an http(s) URL nor a file ({wsdl_path})")
        wsdl = str(wsdl_path)
    endpoint = None
    if soap.endpoint is not None:
        endpoint = on_server(soap.endpoint)
        if endpoint is None:
            problems.append(f"soap.endpoint: {soap.endpoint!r} is not an http(s) URL")
    return soap.model_copy(
        update={
            "base_url": base_url,
            "wsdl": wsdl,
            "endpoint": endpoint,
            "wsdl_cache": str(base_dir / soap.wsdl_cache) if soap.wsdl_cache else None,
            "ca_file": str(base_dir / soap.ca_file) if soap.ca_file else None,
        }
    )


_PYDANTIC_MESSAGES = {
    "extra_forbidden": "unknown key (a typo?)",
    "missing": "is required",
}


def _pydantic_problem(error: Mapping[str, Any]) -> str:
    loc = [part for part in error["loc"] if not (isinstance(part, str) and part.startswith("function-"))]
    message = _PYDANTIC_MESSAGES.get(error["type"], error["msg"])
    where = _loc(loc) if loc else "(top level)"
    return f"{where}: {message}"
