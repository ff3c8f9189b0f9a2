"""The ZAP schema language: parser and the plain objects it produces."""
from .model import MISSING, Enum, Field, Http, Interface, Method, Schema, Struct, TypeRef
from .parser import SchemaError, load, parse_text

__all__ = ["MISSING", "Enum", "Field", "Http", "Interface", "Method", "Schema", "SchemaError", "Struct", "TypeRef", "load", "parse_text"]
