"""Tools shipped with eslabon, usable from any chain file without an import allowance.

``tools: [eslabon.tools:calculadora]`` — arithmetic evaluated on a parsed expression tree (never
``eval``): numbers, + - * / // % **, parentheses and unary signs only.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from typing import Any

__all__ = ["calculadora"]

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_MAX_EXPONENT = 1000  # 9**9**9 would keep a CPU busy for hours
_MAX_LENGTH = 500
_MAX_DIGITS = 4_000  # below Python's 4,300-digit limit for printing an int


def _digits(number: int | float) -> float:
    """About how many decimal digits ``number`` has (exact enough to bound a power)."""
    if isinstance(number, int):
        return number.bit_length() * 0.30103 + 1
    return max(1.0, math.log10(abs(number)) + 1) if math.isfinite(number) else 1.0


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        if isinstance(node.value, bool):
            raise ValueError("not a number: " + repr(node.value))
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ValueError(f"exponent too large (at most {_MAX_EXPONENT})")
        if isinstance(node.op, ast.Pow) and abs(left) > 1 and _digits(left) * right > _MAX_DIGITS:
            # the exponent alone is not enough: (9**999)**999 has a million digits
            raise ValueError(f"result too large (more than {_MAX_DIGITS} digits)")
        return _BINARY[type(node.op)](left, right)  # type: ignore[no-any-return]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))  # type: ignore[no-any-return]
    raise ValueError(f"not allowed in an arithmetic expression: {ast.unparse(node)!r}")


_SIGNS = {
    "multiplicado por": "*",
    "dividido entre": "/",
    "dividido por": "/",
    "elevado a": "**",
    "por": "*",
    "x": "*",
    "más": "+",
    "mas": "+",
    "menos": "-",
    "entre": "/",
}
# whole words between spaces or parentheses only: "0x10" stays a hexadecimal number
_WORDS = re.compile(r"(?<=[\s)])(" + "|".join(_SIGNS) + r")(?=[\s(])", re.IGNORECASE)


def calculadora(expresion: str) -> int | float:
    """Calcula una expresión aritmética, por ejemplo '17 * (3 + 4) / 2'.

    Args:
        expresion: números con + - * / // % ** y paréntesis (o por, más, menos, entre,
            elevado a).
    """
    text = expresion.strip().replace("×", "*").replace("÷", "/").replace("^", "**")
    if len(text) > _MAX_LENGTH:
        raise ValueError(f"expression longer than {_MAX_LENGTH} characters")
    # "17 por 23": a small model copies the question's words far more reliably than it turns
    # them into signs (chains/calculadora.yaml on the bundled model)
    text = _WORDS.sub(lambda m: _SIGNS[m.group(1).lower()], text)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expresion!r}") from None
    result = _evaluate(tree)
    return int(result) if isinstance(result, float) and result.is_integer() else result
