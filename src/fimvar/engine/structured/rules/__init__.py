"""Per-module rules of the structured engine, one small file per kind of module."""

from fimvar.engine.structured.rules import activations, conv, linear, normalization, pooling, shape
from fimvar.engine.structured.rules.base import RULES, Rule, register

__all__ = ["RULES", "Rule", "activations", "conv", "linear", "normalization", "pooling",
           "register", "shape"]
