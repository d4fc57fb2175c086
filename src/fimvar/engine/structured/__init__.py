"""The structured engine: exact derivatives of feed-forward stacks from per-module rules."""

from fimvar.engine.structured.engine import StructuredEngine, flatten_modules, unsupported_reason
from fimvar.engine.structured.rules import RULES, Rule, register

__all__ = ["RULES", "Rule", "StructuredEngine", "flatten_modules", "register", "unsupported_reason"]
