"""The mapping engine shared by every adapter: values (filters), requests (templates), replies (extract)."""

from adapters.mapping.binding import OperationBinding
from adapters.mapping.errors import FilterError, MappingError, ReplyMappingError
from adapters.mapping.extract import Extractor, FieldRule, ListRule, Record, ReplyRule, XmlExtractor
from adapters.mapping.filters import CodeTables, Filters
from adapters.mapping.templates import RequestTemplate, TemplateEnvironment

__all__ = [
    "CodeTables",
    "Extractor",
    "FieldRule",
    "FilterError",
    "Filters",
    "ListRule",
    "MappingError",
    "OperationBinding",
    "Record",
    "ReplyMappingError",
    "ReplyRule",
    "RequestTemplate",
    "TemplateEnvironment",
    "XmlExtractor",
]
