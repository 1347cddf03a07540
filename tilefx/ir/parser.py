"""Parser of IR text (``grammar.lark``) back into a ``Graph``.

``parse_graph(print_graph(g), g.constants)`` is structurally equal to ``g``:
the printer and this file are twins and the test-suite checks the round trip
on every graph any test builds (``tests/conftest.py``).

Constant arrays are not part of the text. The top-level graph gets the
``constants`` mapping given here; a kernel body gets the entries its own
``const {name}`` ops refer to. Each graph is its own scope: a kernel body
sees only its parameters, never the values of the graph around it.

Errors name the line and column (``IRParseError``): a syntax error, a use of
a value that is not defined, an unknown dtype or a bad dim expression.
Semantic checks (types, attrs, arity) are the verifier's job, so a test can
parse a deliberately broken graph and hand it to ``verify``.

IR text may come from a file someone else wrote (an artifact's ``graph.tir``),
so reading it never runs code and stays cheap whatever the text: dim
expressions go through our own grammar (``dim_expr.py``), never ``sympify``;
a ``fallback`` target must name an ATen-style operator (``check_fallback_target``);
the text size, the nesting of kernel bodies and lists, and the digits of an
integer are bounded, each with an ``IRParseError`` naming the place.
"""

from __future__ import annotations

import functools
import json
import re
import time
from pathlib import Path
from typing import Any, Mapping

import lark

from tilefx.ir.dim_expr import MAX_INT_DIGITS, DimExprError, parse_dim_expr
from tilefx.ir.graph import AttrValue, Graph, Op, Value
from tilefx.ir.interpreter import check_fallback_target
from tilefx.ir.ops.registry import OPS, REQUIRED
from tilefx.ir.types import DType, TensorType, normalize_dim, symbol

_DTYPES = {dt.short: dt for dt in DType}
MAX_TEXT_CHARS = 64 << 20   # a 1000-layer model prints a few MB; lark needs ~20x the text
MAX_NESTING = 16            # kernel bodies in kernel bodies, lists in lists (real IR: 1-2)
# Brackets of any kind, outside strings and comments, checked before lark runs so that
# deep text fails at once (a kernel body is 2 levels, an attribute dict 1, a list 1).
_MAX_BRACKET_DEPTH = 4 * MAX_NESTING
# sympy.simplify (every dim goes through it) has no cost bound that text limits can
# guarantee; real IR spends milliseconds on its dims, hostile text is stopped here.
DIM_SECONDS_BUDGET = 20.0
_BRACKETS = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|[{}\[\]]')


class IRParseError(ValueError):
    """Bad IR text; the message starts with ``line L, column C``."""


@functools.lru_cache(maxsize=1)
def _lark_parser() -> Any:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return lark.Lark(grammar, parser="lalr", lexer="contextual", maybe_placeholders=True)


def parse_graph(text: str, constants: Mapping[str, Any] | None = None) -> Graph:
    """Parse IR text (one top-level ``graph``) into a ``Graph``."""
    if len(text) > MAX_TEXT_CHARS:
        raise IRParseError(f"line 1, column 1: IR text of {len(text)} characters is over the "
                           f"limit of {MAX_TEXT_CHARS}")
    _check_depth(text)
    try:
        tree = _lark_parser().parse(text)
        return _GraphReader(text, dict(constants or {})).graph(tree.children[0], top=True)
    except lark.exceptions.UnexpectedInput as e:
        raise IRParseError(_syntax_message(e, text)) from None
    except RecursionError:  # the depth limits below should come first; this is the backstop
        raise IRParseError("line 1, column 1: IR text nested too deeply to read") from None


def _check_depth(text: str) -> None:
    depth = 0
    for m in _BRACKETS.finditer(text):
        c = m.group()
        if c in "{[":
            depth += 1
            if depth > _MAX_BRACKET_DEPTH:
                line = text.count("\n", 0, m.start()) + 1
                column = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
                raise IRParseError(f"line {line}, column {column}: brackets nested deeper than "
                                   f"{_MAX_BRACKET_DEPTH}")
        elif c in "}]":
            depth -= 1


def _syntax_message(e: Any, text: str) -> str:
    if isinstance(e, lark.exceptions.UnexpectedToken):
        what = f"unexpected {e.token.type} {str(e.token)!r}"
        expected = sorted(e.accepts or e.expected)
        if expected:
            what += f", expected one of {', '.join(expected[:8])}"
    elif isinstance(e, lark.exceptions.UnexpectedCharacters):
        what = f"unexpected character {text[e.pos_in_stream]!r}" if e.pos_in_stream < len(text) \
            else "unexpected character"
    else:
        what = "unexpected end of input"
    return f"line {e.line}, column {e.column}: {what}\n{e.get_context(text).rstrip()}"


def _unquote(name: str) -> str:
    return json.loads(name) if name.startswith('"') else name


class _GraphReader:
    """Turns the lark tree into IR objects, one scope (name -> Value) per graph."""

    def __init__(self, text: str, constants: dict[str, Any]) -> None:
        self.text = text
        self.constants = constants
        self.depth = 0  # kernel bodies around the graph being read
        self.dims: dict[str, Any] = {}  # dim text -> value: the same dims repeat all over
        self.dim_seconds = 0.0

    def error(self, token: Any, message: str) -> IRParseError:
        return IRParseError(f"line {token.line}, column {token.column}: {message}")

    def graph(self, tree: Any, top: bool) -> Graph:
        name_tok, *rest = tree.children
        params = [c for c in rest if getattr(c, "data", None) == "param"]
        ops_trees = [c for c in rest if getattr(c, "data", None) == "op"]
        ret = rest[-1]
        scope: dict[str, Value] = {}
        inputs = []
        for p in params:
            v = Value(_unquote(p.children[0][1:]), self.type(p.children[1]))
            scope[v.name] = v
            inputs.append(v)
        ops = []
        for t in ops_trees:
            op = self.op(t, scope)
            ops.append(op)
            for r in op.results:
                scope[r.name] = r
        outputs = self.uses(ret.children if ret is not None else [], scope)
        if top:
            constants = self.constants
        else:
            referenced = [op.attr("name") for op in ops if op.name == "const"]
            constants = {k: self.constants[k] for k in referenced if k in self.constants}
        return Graph(_unquote(name_tok[1:]), tuple(inputs), tuple(ops), tuple(outputs), constants)

    def uses(self, tokens: list[Any], scope: dict[str, Value]) -> list[Value]:
        out = []
        for tok in tokens:
            if tok is None:
                continue
            name = _unquote(tok[1:])
            if name not in scope:
                raise self.error(tok, f"value %{name} is used but not defined before this point")
            out.append(scope[name])
        return out

    def op(self, tree: Any, scope: dict[str, Value]) -> Op:
        results_tree, name_tok, args_tree, attrs_tree, types_tree, body_tree = tree.children
        result_toks = results_tree.children if results_tree is not None else []
        inputs = self.uses(args_tree.children if args_tree is not None else [], scope)
        attrs: dict[str, AttrValue] = {}
        if attrs_tree is not None:
            for a in attrs_tree.children:
                if a is None:
                    continue
                key_tok, value_tree = a.children
                if str(key_tok) in attrs:
                    raise self.error(key_tok, f"attribute {key_tok} given twice")
                attrs[str(key_tok)] = self.attr_value(value_tree, key_tok)
        types = [self.type(t) for t in types_tree.children] if types_tree.data == "result_types" else []
        if len(types) != len(result_toks):
            raise self.error(name_tok, f"op {name_tok} defines {len(result_toks)} value(s) "
                                       f"but lists {len(types)} type(s)")
        results = tuple(Value(_unquote(tok[1:]), t) for tok, t in zip(result_toks, types))
        if name_tok == "fallback" and "target" in attrs:
            problem = check_fallback_target(attrs["target"])
            if problem:
                raise self.error(name_tok, problem)
        _fill_defaults(str(name_tok), attrs)
        body = self.body(body_tree, name_tok) if body_tree is not None else None
        return Op(str(name_tok), tuple(inputs), results, tuple(sorted(attrs.items())), body)

    def body(self, tree: Any, name_tok: Any) -> Graph:
        if self.depth >= MAX_NESTING:
            raise self.error(name_tok, f"kernel bodies nested deeper than {MAX_NESTING}")
        self.depth += 1
        try:
            return self.graph(tree.children[0], top=False)
        finally:
            self.depth -= 1

    def int(self, tok: Any) -> int:
        if len(tok.lstrip("-")) > MAX_INT_DIGITS:
            raise self.error(tok, f"integer of {len(tok.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
        return int(tok)

    def type(self, tree: Any) -> TensorType:
        dtype_tok, *dims = tree.children
        if str(dtype_tok) not in _DTYPES:
            raise self.error(dtype_tok, f"unknown dtype {dtype_tok!s} (one of {', '.join(_DTYPES)})")
        return TensorType(_DTYPES[str(dtype_tok)], tuple(self.dim(d.children[0]) for d in dims if d is not None))

    def dim(self, tok: Any) -> Any:
        if tok.type == "INT":
            return self.int(tok)
        if tok.type == "IDENT":
            return symbol(str(tok))
        text = str(tok)
        if text in self.dims:
            return self.dims[text]
        if self.dim_seconds > DIM_SECONDS_BUDGET:
            raise self.error(tok, f"dim expressions took over {DIM_SECONDS_BUDGET:.0f} s to "
                                  "read; the text is not IR that tilefx printed")
        t0 = time.perf_counter()
        try:
            value = self.dims[text] = normalize_dim(parse_dim_expr(text[1:-1]))
            return value
        except DimExprError as e:
            # the token is one line (no newline in DIMEXPR): offset 0 is just after "{"
            where = f"line {tok.line}, column {tok.column + 1 + e.offset}"
            raise IRParseError(f"{where}: bad dim expression {str(tok)[:80]}: {e}") from None
        except (TypeError, ValueError, ArithmeticError) as e:  # sympy refusing an operation
            raise self.error(tok, f"bad dim expression {str(tok)[:80]}: {e}") from None
        finally:
            self.dim_seconds += time.perf_counter() - t0

    def attr_value(self, tree: Any, key_tok: Any, depth: int = 0) -> AttrValue:
        kind, children = tree.data, tree.children
        if kind == "int_value":
            return self.int(children[0])
        if kind == "float_value":
            return float(children[0])
        if kind == "str_value":
            return json.loads(children[0])
        if kind == "true_value":
            return True
        if kind == "false_value":
            return False
        if kind == "none_value":
            return None
        if kind == "ident_value":
            name = str(children[0])
            return _DTYPES[name] if name in _DTYPES else symbol(name)
        if kind == "expr_value":
            return self.dim(children[0])
        if kind == "tuple_value":
            if depth >= MAX_NESTING:
                raise self.error(key_tok, f"attribute {key_tok}: lists nested deeper than {MAX_NESTING}")
            return tuple(self.attr_value(c, key_tok, depth + 1) for c in children if c is not None)
        raise AssertionError(kind)


def _fill_defaults(name: str, attrs: dict[str, AttrValue]) -> None:
    """Attributes the text leaves out that have a default get it: an attribute added to an
    op later (``softmax``'s ``safe``, ``take``'s ``wrap``) keeps older IR text and artifacts
    loading, with the meaning they had. The printer writes every attribute."""
    opdef = OPS.get(name) if name != "const" else None  # a const's attributes are its own
    for key, default in (opdef.attrs.items() if opdef is not None else ()):
        if key not in attrs and default is not REQUIRED:
            attrs[key] = default
