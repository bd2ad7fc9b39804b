"""The configuration toolkit the agent and the gateway share: one TOML file, strict sections, one error.

Both products read their config the same way — TOML, every section refusing unknown keys (a typo is an error,
not a silently ignored setting), ``HOST:PORT`` listeners, ``${env:NAME}`` expanded before validation, and one way
to name a secret (``Secret``: a file or an environment variable; docs/OPERATIONS.md, "Secrets"). A leaf: it
imports nothing of ours, so the gateway may use it as it uses the bridge's protocol helpers.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

_ENV_RE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """A config that cannot be used: the message names the file, the key and what is wrong with it."""


class StrictModel(BaseModel):
    """A config section: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


def parse_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8443`` for IPv6) as the host without brackets and the port number."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def host_port(value: str) -> str:
    """A field validator: the value unchanged when it is ``HOST:PORT``."""
    parse_host_port(value)
    return value


def addresses_or_networks(values: list[str]) -> list[str]:
    """A field validator: the list unchanged when every item is an address or a network."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an address or network (10.0.0.5, 10.0.0.0/24, ::1)") from None
    return values


def expand_env(value: Any) -> Any:
    """Replace every ``${env:NAME}`` in the strings of a parsed TOML document; an unset variable is an error."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigError(f"environment variable {name} is not set")
            return os.environ[name]

        return _ENV_RE.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return value


def read_toml(path: Path, *, missing_hint: str = "") -> dict[str, Any]:
    """A config file parsed, or a ``ConfigError`` saying it is missing or not TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file{missing_hint}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def validation_error(where: object, error: ValidationError) -> ConfigError:
    """One line per problem, each naming the file and the dotted key."""
    lines = [f"{where}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in error.errors()]
    return ConfigError("\n".join(lines))


class Secret(StrictModel, frozen=True):
    """The one way to name a secret: ``{ file = "secrets/x.key" }`` (read at start-up, trailing newline
    stripped) or ``{ env = "NAME" }``. The value itself is never in the config."""

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        if (self.file is None) == (self.env is None):
            raise ValueError("a secret comes from exactly one of `file` or `env`")
        return self

    def read(self) -> str:
        if self.file is not None:
            return self.file.read_text(encoding="utf-8").strip()
        assert self.env is not None
        value = os.environ.get(self.env)
        if not value:
            raise ValueError(f"environment variable {self.env} is not set")
        return value

    def resolved(self, base: Path) -> Secret:
        """The same secret with a relative ``file`` made absolute against the config's folder."""
        if self.file is None or self.file.is_absolute():
            return self
        return Secret(file=base / self.file)


def file_aliases(aliases: dict[str, str]) -> Callable[[type, Any], Any]:
    """A ``model_validator(mode="before")`` accepting the deprecated ``X_file = "path"`` spelling of a secret
    for ``X = { file = "path" }``, so configs written before ``Secret`` keep loading."""

    def accept(cls: type, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in aliases.items():
            if old in data:
                if new in data:
                    raise ValueError(f"give {new} or its older spelling {old}, not both")
                data[new] = {"file": data.pop(old)}
        return data

    return accept
