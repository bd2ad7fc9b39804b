"""Request bodies rendered from sandboxed Jinja2 templates written in the profile.

Templates are authored by HIS vendor engineers, so they run in an immutable sandbox (no attribute tricks, no
mutation of the inputs). For SOAP they mostly produce XML that travels inside a string parameter, so values
are XML-escaped automatically (other protocols bring their own escaping, see :class:`TemplateEnvironment`);
a template that must emit a value verbatim can wrap it in ``{% autoescape false %}…{% endautoescape %}``.
A missing field is an error naming it rather than an empty element, and ``None`` (an optional catalog field
left out) renders as empty text rather than ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from adapters.mapping.errors import FilterError, MappingError
from adapters.mapping.filters import Filters


def _finalize(value: Any) -> Any:
    return "" if value is None else value


def _strict(function: Callable[..., Any]) -> Callable[..., Any]:
    """Our filters would otherwise receive an undefined value as an object and report it badly."""

    def apply(value: Any, *args: Any) -> Any:
        if isinstance(value, jinja2.Undefined):
            value._fail_with_undefined_error()
        return function(value, *args)

    return apply


Escape = Callable[[str], str]


class TemplateEnvironment:
    """The sandboxed Jinja2 environment of one profile, with its filters and variables.

    ``escape`` says how a value is made safe for the protocol's text: ``None`` is XML autoescaping (SOAP); a
    function is applied to every value a template outputs but never to the template's own text (HL7 escapes
    its separators, so a patient name containing ``^`` or ``|`` cannot shift fields); ``"verbatim"`` leaves
    values as they are, for stored-procedure parameters, which are bound and never spliced into SQL.
    """

    def __init__(
        self, filters: Filters, variables: Mapping[str, Any] | None = None, escape: Escape | str | None = None
    ) -> None:
        if escape is None:
            finalize: Callable[[Any], Any] = _finalize
        elif escape == "verbatim":
            finalize = _finalize
        elif callable(escape):
            function = escape

            def finalize(value: Any) -> Any:
                return "" if value is None else function(str(value))

        else:
            raise ValueError(f"unknown escape {escape!r}")
        self.env = ImmutableSandboxedEnvironment(
            autoescape=escape is None,
            undefined=jinja2.StrictUndefined,
            finalize=finalize,
            keep_trailing_newline=False,
        )
        self.env.filters.update({name: _strict(f) for name, f in filters.template_filters().items()})
        self.variables = dict(variables or {})
        self.code_tables = filters.codes.names()

    def compile(self, source: str) -> jinja2.Template:
        """Compile one template; raises :class:`ValueError` naming the line and any unknown code table."""
        try:
            tree = self.env.parse(source)
            for table in _code_tables_used(tree):
                if table not in self.code_tables:
                    raise ValueError(f"uses code table {table!r}, which the profile does not define")
            return self.env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"template error on line {exc.lineno}: {exc.message}") from None


def _code_tables_used(tree: nodes.Template) -> Iterator[str]:
    for node in tree.find_all(nodes.Filter):
        if node.name == "code" and node.args and isinstance(node.args[0], nodes.Const):
            yield str(node.args[0].value)


class RequestTemplate:
    """The compiled parameter templates of one operation: parameter name → rendered text."""

    def __init__(self, env: TemplateEnvironment, sources: Mapping[str, str], where: str) -> None:
        self.env = env
        self.where = where
        self.sources = dict(sources)
        self.templates = {name: env.compile(source) for name, source in sources.items()}

    def render(self, params: Mapping[str, Any]) -> dict[str, str]:
        """Render every parameter from the catalog input; a failure is a :class:`MappingError` (not sent)."""
        context = {**params, "vars": self.env.variables}
        rendered: dict[str, str] = {}
        for name, template in self.templates.items():
            try:
                rendered[name] = template.render(context)
            except jinja2.UndefinedError as exc:
                raise MappingError(f"{self.where}.{name}: undefined value: {exc.message}") from None
            except SecurityError as exc:
                raise MappingError(f"{self.where}.{name}: not allowed in a template: {exc}") from None
            except (FilterError, jinja2.TemplateError, TypeError, ValueError) as exc:
                raise MappingError(f"{self.where}.{name}: {exc}") from None
            except Exception as exc:  # an overflow converting a far-off date, say: nothing was sent yet
                raise MappingError(f"{self.where}.{name}: cannot be rendered: {type(exc).__name__}: {exc}") from None
        return rendered
