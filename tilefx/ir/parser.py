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
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Mapping

import sympy

from tilefx.ir.graph import AttrValue, Graph, Op, Value
from tilefx.ir.types import DType, TensorType, parse_dim, symbol

_DTYPES = {dt.short: dt for dt in DType}


class IRParseError(ValueError):
    """Bad IR text; the message starts with ``line L, column C``."""


@functools.lru_cache(maxsize=1)
def _lark_parser() -> Any:
    import lark

    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return lark.Lark(grammar, parser="lalr", lexer="contextual", maybe_placeholders=True)


def parse_graph(text: str, constants: Mapping[str, Any] | None = None) -> Graph:
    """Parse IR text (one top-level ``graph``) into a ``Graph``."""
    import lark

    try:
        tree = _lark_parser().parse(text)
    except lark.exceptions.UnexpectedInput as e:
        raise IRParseError(_syntax_message(e, text)) from None
    return _GraphReader(text, dict(constants or {})).graph(tree.children[0], top=True)


def _syntax_message(e: Any, text: str) -> str:
    import lark

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
                attrs[str(key_tok)] = self.attr_value(value_tree)
        types = [self.type(t) for t in types_tree.children] if types_tree.data == "result_types" else []
        if len(types) != len(result_toks):
            raise self.error(name_tok, f"op {name_tok} defines {len(result_toks)} value(s) "
                                       f"but lists {len(types)} type(s)")
        results = tuple(Value(_unquote(tok[1:]), t) for tok, t in zip(result_toks, types))
        body = self.graph(body_tree.children[0], top=False) if body_tree is not None else None
        return Op(str(name_tok), tuple(inputs), results, tuple(sorted(attrs.items())), body)

    def type(self, tree: Any) -> TensorType:
        dtype_tok, *dims = tree.children
        if str(dtype_tok) not in _DTYPES:
            raise self.error(dtype_tok, f"unknown dtype {dtype_tok!s} (one of {', '.join(_DTYPES)})")
        return TensorType(_DTYPES[str(dtype_tok)], tuple(self.dim(d.children[0]) for d in dims if d is not None))

    def dim(self, tok: Any) -> Any:
        if tok.type == "INT":
            return int(tok)
        if tok.type == "IDENT":
            return symbol(str(tok))
        try:
            return parse_dim(str(tok))
        except (sympy.SympifyError, TypeError, SyntaxError) as e:
            raise self.error(tok, f"bad dim expression {tok!s}: {e}") from None

    def attr_value(self, tree: Any) -> AttrValue:
        kind, children = tree.data, tree.children
        if kind == "int_value":
            return int(children[0])
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
            return tuple(self.attr_value(c) for c in children if c is not None)
        raise AssertionError(kind)
