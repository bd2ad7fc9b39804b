"""Mapping failures, classified by what the dispatcher may safely do next.

A request that cannot be rendered never left the bridge: it is a :class:`MappingError`, permanent, because
sending the same input through the same profile fails the same way.

A reply that cannot be mapped is different. For a read it is permanent too (nothing changed in the HIS, and
retrying reads the same unmappable reply). For a write the HIS may well have applied the call before answering
with something the profile cannot read, so the adapter raises :class:`ReplyMappingError`, an
:class:`~adapters.base.InDoubtError`: the dispatcher must ask the HIS (``trade.check``) before anything is
resent, and an operator must fix the profile. The fact that the HIS may have acted is never lost.
"""

from __future__ import annotations

from adapters.base import InDoubtError, PermanentError

MAPPING_ERROR = "mapping_error"


class FilterError(ValueError):
    """A value filter refused its input (not a number, unknown code, bad date)."""


class MappingError(PermanentError):
    """A request could not be rendered, or a read's reply could not be mapped."""

    def __init__(self, message: str, *, raw: str | None = None) -> None:
        super().__init__(MAPPING_ERROR, message, raw=raw)


class ReplyMappingError(InDoubtError):
    """A write was sent but its reply could not be mapped: the HIS may have applied it."""

    def __init__(self, message: str, *, raw: str | None = None) -> None:
        super().__init__(MAPPING_ERROR, message, raw=raw)
