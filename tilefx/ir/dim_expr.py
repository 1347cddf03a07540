"""Symbolic dim expressions of IR text (``{2*s0 + 1}``), read by our own small grammar.

IR text comes from files a user may not have written (an artifact's ``graph.tir``),
so its expressions must be data, never code: ``sympy.sympify`` evaluates Python
(``{__import__('os').system(...)}`` runs), hence this reader. It accepts exactly
what ``format_dim`` writes (sympy's ``str`` of a dim), in Python's precedence:

    expr  := term (("+" | "-") term)*
    term  := unary (("*" | "/" | "//" | "%") unary)*
    unary := ("-" | "+") unary | power
    power := atom ["**" unary]
    atom  := INT | NAME | FUNC "(" expr ("," expr)* ")" | "(" expr ")"
    FUNC  := floor | ceiling | Mod | Max | Min

and builds the sympy objects directly (``sympy.Integer``, tilefx ``symbol``s,
sympy's own ``+ * / floor Mod Max Min``), which is what ``sympify`` built for
the same text, so the printer -> parser round trip stays exact.

Limits keep hostile text cheap: the expression length, the nesting depth, the
digits of a literal, the size of an exponent and of every number a step makes,
and the number of terms the expression would have expanded. That last one
matters because every dim then goes through ``sympy.simplify``
(``normalize_dim``), which takes seconds to minutes on products of powers of
sums (``(s0 + B + 1)**8*(s0 + 2)**8``: 3**8 * 2**8 terms); shapes make a few
(``s0*s1*s2``: 1, ``floor(s0/2 - 3/2) + 1``: 3). A violation raises ``DimExprError`` naming the
offset; the IR parser turns it into an ``IRParseError`` with the line and column.
"""

from __future__ import annotations

import re
from typing import Callable

import sympy

from tilefx.ir.types import symbol

MAX_EXPR_CHARS = 256      # the printer's longest dims (nested conv floors) are ~150
MAX_DEPTH = 32            # parentheses, unary signs, calls and powers, nested
MAX_INT_DIGITS = 30       # a literal: more than any int64/uint64 size or stride
MAX_EXPONENT = 8          # s0**2 is what shapes make; 10**10**10 must not be computed
MAX_NUMBER_BITS = 256     # every integer/rational a step produces, numerator and denominator
MAX_TERMS = 64            # expanded terms (an upper bound), floor/Mod/Max args included

_FUNCTIONS: dict[str, Callable[..., sympy.Expr]] = {
    "floor": sympy.floor, "ceiling": sympy.ceiling, "Mod": sympy.Mod,
    "Max": sympy.Max, "Min": sympy.Min}
_ARITY = {"floor": (1, 1), "ceiling": (1, 1), "Mod": (2, 2), "Max": (1, 4), "Min": (1, 4)}

_TOKEN = re.compile(r"\s*(?:(?P<int>[0-9]+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                    r"|(?P<op>\*\*|//|[-+*/%(),]))")


class DimExprError(ValueError):
    """A dim expression that is malformed or over a limit; ``offset`` is where, in the text."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def parse_dim_expr(text: str) -> sympy.Expr:
    """The sympy expression of ``text`` (without the braces); raises ``DimExprError``."""
    if len(text) > MAX_EXPR_CHARS:
        raise DimExprError(f"dim expression of {len(text)} characters (at most {MAX_EXPR_CHARS})", 0)
    value = _Reader(text).read()
    if _terms(value) > MAX_TERMS:
        raise DimExprError(f"dim expression would expand to more than {MAX_TERMS} terms", 0)
    return value


def _terms(e: sympy.Expr) -> int:
    """An upper bound on the terms of ``e`` expanded, a function's arguments summed in."""
    if not e.args:
        return 1
    if e.is_Mul:
        out = 1
        for a in e.args:
            out = min(out * _terms(a), MAX_TERMS + 1)  # capped: the bound only has to refuse
        return out
    if e.is_Pow:
        exponent = e.args[1]
        if not exponent.is_Integer:
            return MAX_TERMS + 1
        return min(_terms(e.args[0]) ** min(abs(int(exponent)), MAX_EXPONENT), MAX_TERMS + 1)
    return sum(_terms(a) for a in e.args)  # Add, floor, Mod, Max...


def _check_number(value: sympy.Expr, offset: int) -> sympy.Expr:
    """Refuse a result that is not finite or holds a number too large to be a size."""
    if value.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        raise DimExprError("dim expression is not finite (division by zero?)", offset)
    for number in value.atoms(sympy.Rational):
        if max(abs(number.p).bit_length(), number.q.bit_length()) > MAX_NUMBER_BITS:
            raise DimExprError(f"dim expression makes a number over {MAX_NUMBER_BITS} bits", offset)
    return value


class _Reader:
    """Recursive descent over the tokens; recursion is bounded by ``MAX_DEPTH``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = self._tokenize(text)
        self.i = 0
        self.depth = 0

    @staticmethod
    def _tokenize(text: str) -> list[tuple[str, str, int]]:
        out: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                if text[pos:].strip() == "":
                    break
                raise DimExprError(f"unexpected character {text[pos]!r} in dim expression", pos)
            kind = m.lastgroup or ""
            out.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        return out

    # -- token helpers --------------------------------------------------------
    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def offset(self) -> int:
        tok = self.peek()
        return tok[2] if tok else len(self.text)

    def accept(self, op: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "op" and tok[1] == op:
            self.i += 1
            return True
        return False

    def expect(self, op: str) -> None:
        if not self.accept(op):
            raise DimExprError(f"expected {op!r} in dim expression", self.offset())

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise DimExprError(f"dim expression nested deeper than {MAX_DEPTH}", self.offset())

    # -- grammar --------------------------------------------------------------
    def read(self) -> sympy.Expr:
        if not self.tokens:
            raise DimExprError("empty dim expression", 0)
        value = self.expr()
        if self.peek() is not None:
            raise DimExprError(f"unexpected {self.peek()[1]!r} in dim expression", self.offset())
        return value

    def expr(self) -> sympy.Expr:
        value = self.term()
        while True:
            at = self.offset()
            if self.accept("+"):
                value = _check_number(value + self.term(), at)
            elif self.accept("-"):
                value = _check_number(value - self.term(), at)
            else:
                return value

    def term(self) -> sympy.Expr:
        value = self.unary()
        while True:
            at = self.offset()
            if self.accept("*"):
                value = value * self.unary()
            elif self.accept("//"):
                value = sympy.floor(value / self.unary())
            elif self.accept("/"):
                value = value / self.unary()
            elif self.accept("%"):
                value = sympy.Mod(value, self.unary())
            else:
                return value
            value = _check_number(value, at)

    def unary(self) -> sympy.Expr:
        self.enter()
        try:
            if self.accept("-"):
                return -self.unary()
            if self.accept("+"):
                return self.unary()
            return self.power()
        finally:
            self.depth -= 1

    def power(self) -> sympy.Expr:
        base = self.atom()
        at = self.offset()
        if not self.accept("**"):
            return base
        exponent = self.unary()
        if not (exponent.is_Integer and abs(int(exponent)) <= MAX_EXPONENT):
            raise DimExprError(f"exponent {exponent} in a dim expression: only integers up to "
                               f"{MAX_EXPONENT} in size", at)
        return _check_number(base ** exponent, at)

    def atom(self) -> sympy.Expr:
        tok = self.peek()
        if tok is None:
            raise DimExprError("dim expression ends too early", len(self.text))
        kind, text, at = tok
        self.i += 1
        if kind == "int":
            if len(text) > MAX_INT_DIGITS:
                raise DimExprError(f"integer of {len(text)} digits in a dim expression "
                                   f"(at most {MAX_INT_DIGITS})", at)
            return sympy.Integer(int(text))
        if kind == "name":
            if text in _FUNCTIONS and self.accept("("):
                return self.call(text, at)
            return symbol(text)
        if text == "(":
            self.enter()
            try:
                value = self.expr()
            finally:
                self.depth -= 1
            self.expect(")")
            return value
        raise DimExprError(f"unexpected {text!r} in dim expression", at)

    def call(self, name: str, at: int) -> sympy.Expr:
        self.enter()
        try:
            args = [self.expr()]
            while self.accept(","):
                args.append(self.expr())
        finally:
            self.depth -= 1
        self.expect(")")
        low, high = _ARITY[name]
        if not low <= len(args) <= high:
            raise DimExprError(f"{name} takes {low if low == high else f'{low} to {high}'} "
                               f"argument(s), got {len(args)}", at)
        return _check_number(_FUNCTIONS[name](*args), at)
