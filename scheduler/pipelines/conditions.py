"""A step's ``if``: a small expression language, parsed once into an AST and evaluated.

The grammar (``||`` binds loosest, ``!`` tightest)::

    expr     := and ( "||" and )*
    and      := unary ( "&&" unary )*
    unary    := "!" unary | "(" expr ")" | call | operand ( "==" | "!=" ) operand
    call     := "always()" | "success()" | "failure()"
    operand  := 'text' | "text" | branch | tag | event | pr | status.<need key>

Values come from the run (``branch``, ``tag``, ``event``, ``pr``: strings, "" when absent) and
from the needs (``status.<key>``: passed, failed, skipped, cancelled). Nothing is ever
interpolated into a command and nothing reaches Python's ``eval``: the text is tokenized,
checked (a string is never a condition, a condition never a string) and kept as frozen nodes.

As in GitHub Actions, an expression that calls none of ``always()``, ``success()`` and
``failure()`` is read as ``success() && (expr)``: ``if: branch == "main"`` still skips the step
after a failed need, and only a status function says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, assert_never

from scheduler.errors import PipelineFileError

__all__ = [
    "ALWAYS",
    "SUCCESS",
    "And",
    "Call",
    "Compare",
    "Condition",
    "ConditionInputs",
    "NeedStatus",
    "Not",
    "Or",
    "Text",
    "Variable",
    "parse_condition",
]

MAX_CONDITION_CHARS = 4096
# Nesting of parentheses and "!": far beyond any real condition, far below Python's recursion.
MAX_DEPTH = 32

VariableName = Literal["branch", "tag", "event", "pr"]
FunctionName = Literal["always", "success", "failure"]
VARIABLES: tuple[VariableName, ...] = ("branch", "tag", "event", "pr")
FUNCTIONS: tuple[FunctionName, ...] = ("always", "success", "failure")


@dataclass(frozen=True, slots=True)
class Text:
    value: str


@dataclass(frozen=True, slots=True)
class Variable:
    name: VariableName


@dataclass(frozen=True, slots=True)
class NeedStatus:
    """``status.<key>``: the status a need ended with (a matrixed need: all its variants)."""

    key: str


@dataclass(frozen=True, slots=True)
class Call:
    name: FunctionName


@dataclass(frozen=True, slots=True)
class Compare:
    op: Literal["==", "!="]
    left: Operand
    right: Operand


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr


@dataclass(frozen=True, slots=True)
class And:
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Or:
    left: Expr
    right: Expr


Operand = Text | Variable | NeedStatus
Expr = Call | Compare | Not | And | Or


@dataclass(frozen=True, slots=True)
class ConditionInputs:
    """What an ``if`` may look at when its step's needs have all ended."""

    variables: dict[str, str]
    need_status: Callable[[str], str]
    # Some step upstream (a need, or a need's need...) failed / was cancelled.
    upstream_failed: bool
    upstream_cancelled: bool


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed ``if``; ``text`` is kept to be shown, ``expr`` is what is evaluated."""

    text: str
    expr: Expr

    @property
    def implies_success(self) -> bool:
        """Whether ``success() &&`` is implied (the expression names no status function)."""
        return not any(isinstance(node, Call) for node in walk(self.expr))

    def need_keys(self) -> tuple[str, ...]:
        """The keys named by ``status.<key>``, in the order written."""
        return tuple(dict.fromkeys(n.key for n in walk(self.expr) if isinstance(n, NeedStatus)))

    def evaluate(self, inputs: ConditionInputs) -> bool:
        result = _truth(self.expr, inputs)
        if self.implies_success:
            return _call("success", inputs) and result
        return result


def walk(node: Expr | Operand) -> Iterator[Expr | Operand]:
    yield node
    match node:
        case Compare(_, left, right) | And(left, right) | Or(left, right):
            yield from walk(left)
            yield from walk(right)
        case Not(operand):
            yield from walk(operand)
        case Text() | Variable() | NeedStatus() | Call():
            pass
        case _:
            assert_never(node)


def _truth(expr: Expr, inputs: ConditionInputs) -> bool:
    match expr:
        case Call(name):
            return _call(name, inputs)
        case Compare(op, left, right):
            equal = _value(left, inputs) == _value(right, inputs)
            return equal if op == "==" else not equal
        case Not(operand):
            return not _truth(operand, inputs)
        case And(left, right):
            return _truth(left, inputs) and _truth(right, inputs)
        case Or(left, right):
            return _truth(left, inputs) or _truth(right, inputs)
        case _:
            assert_never(expr)


def _call(name: FunctionName, inputs: ConditionInputs) -> bool:
    # As GitHub's: failure() looks at every ancestor, so a failure two steps up still counts
    # (the step in between was skipped for it, and a skip alone is not a failure).
    if name == "always":
        return True
    if name == "failure":
        return inputs.upstream_failed
    return not (inputs.upstream_failed or inputs.upstream_cancelled)


def _value(operand: Operand, inputs: ConditionInputs) -> str:
    match operand:
        case Text(value):
            return value
        case Variable(name):
            return inputs.variables.get(name, "")
        case NeedStatus(key):
            return inputs.need_status(key)
        case _:
            assert_never(operand)


# -- parsing ------------------------------------------------------------------------------------

_KEY = r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\[[A-Za-z0-9_=,.+:/@-]*\])?"
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<status>status\.(?P<key>"""
    + _KEY
    + r"""))
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | '(?P<single>[^'\n]*)'
      | "(?P<double>[^"\n]*)"
      | (?P<op>==|!=|&&|\|\||!|\(|\))
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: Literal["status", "name", "text", "op", "end", "bad"]
    value: str
    column: int  # 1-based, for the error


class _Parser:
    def __init__(self, text: str, line: int | None, source: str) -> None:
        self.text = text
        self.line = line
        self.source = source
        self.tokens = list(self._tokenize())
        self.position = 0
        self.depth = 0

    def fail(self, message: str, column: int) -> PipelineFileError:
        return PipelineFileError(f"if: {message} at column {column}", self.line, self.source)

    def _tokenize(self) -> Iterator[_Token]:
        index = 0
        while True:
            while index < len(self.text) and self.text[index].isspace():
                index += 1
            if index == len(self.text):
                yield _Token("end", "", index + 1)
                return
            match = _TOKEN.match(self.text, index)
            if match is None or match.end() == index:
                # Reported when the parser reaches it, so an earlier error is named first.
                yield _Token("bad", self.text[index : index + 10], index + 1)
                return
            column = match.start(match.lastgroup or 0) + 1
            if match.group("status") is not None:
                yield _Token("status", match.group("key"), column)
            elif match.group("name") is not None:
                yield _Token("name", match.group("name"), column)
            elif match.group("single") is not None:
                yield _Token("text", match.group("single"), match.start("single"))
            elif match.group("double") is not None:
                yield _Token("text", match.group("double"), match.start("double"))
            else:
                yield _Token("op", match.group("op"), column)
            index = match.end()

    @property
    def current(self) -> _Token:
        return self.tokens[self.position]

    def take(self) -> _Token:
        token = self.current
        if token.kind == "bad":
            raise self.fail(f"unexpected {token.value!r}", token.column)
        self.position += 1
        return token

    def accept(self, op: str) -> bool:
        if self.current.kind == "op" and self.current.value == op:
            self.position += 1
            return True
        return False

    def parse(self) -> Expr:
        expr = self.disjunction()
        if self.current.kind != "end":
            raise self.fail(f"unexpected {self.current.value!r}", self.current.column)
        return expr

    def disjunction(self) -> Expr:
        expr = self.conjunction()
        while self.accept("||"):
            expr = Or(expr, self.conjunction())
        return expr

    def conjunction(self) -> Expr:
        expr = self.unary()
        while self.accept("&&"):
            expr = And(expr, self.unary())
        return expr

    def unary(self) -> Expr:
        token = self.current
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"nested deeper than {MAX_DEPTH} levels", token.column)
        try:
            if self.accept("!"):
                return Not(self.unary())
            if self.accept("("):
                expr = self.disjunction()
                if not self.accept(")"):
                    raise self.fail(f"expected ')' before {self._shown()}", self.current.column)
                return expr
            if token.kind == "name" and token.value in FUNCTIONS:
                return self.call()
            return self.comparison()
        finally:
            self.depth -= 1

    def call(self) -> Call:
        token = self.take()
        if not (self.accept("(") and self.accept(")")):
            raise self.fail(
                f"{token.value} takes no arguments: write {token.value}()", token.column
            )
        return Call(_function(token.value))

    def comparison(self) -> Compare:
        left = self.operand()
        operator = self.current
        if not (operator.kind == "op" and operator.value in ("==", "!=")):
            if operator.kind == "bad":
                raise self.fail(f"unexpected {operator.value!r}", operator.column)
            raise self.fail(
                f"a value is not a condition: compare it with == or != (found {self._shown()})",
                operator.column,
            )
        self.position += 1
        right = self.operand()
        return Compare("==" if operator.value == "==" else "!=", left, right)

    def operand(self) -> Operand:
        token = self.take()
        if token.kind == "text":
            return Text(token.value)
        if token.kind == "status":
            return NeedStatus(token.value)
        if token.kind == "name" and token.value in VARIABLES:
            return Variable(_variable(token.value))
        if token.kind == "name":
            known = ", ".join([*VARIABLES, "status.<need>", *(f"{f}()" for f in FUNCTIONS)])
            raise self.fail(f"unknown name {token.value!r} (known: {known})", token.column)
        shown = "end of condition" if token.kind == "end" else repr(token.value)
        raise self.fail(f"expected a value, found {shown}", token.column)

    def _shown(self) -> str:
        token = self.current
        return "end of condition" if token.kind == "end" else repr(token.value)


def _function(name: str) -> FunctionName:
    for known in FUNCTIONS:
        if name == known:
            return known
    raise AssertionError(name)


def _variable(name: str) -> VariableName:
    for known in VARIABLES:
        if name == known:
            return known
    raise AssertionError(name)


def parse_condition(
    text: str, *, line: int | None = None, source: str = ".scheduler/pipeline.yml"
) -> Condition:
    """``text`` as a :class:`Condition`, or :class:`PipelineFileError` saying where it breaks."""
    if len(text) > MAX_CONDITION_CHARS:
        raise PipelineFileError(f"if: longer than {MAX_CONDITION_CHARS} characters", line, source)
    if not text.strip():
        raise PipelineFileError("if: must not be empty", line, source)
    return Condition(text.strip(), _Parser(text, line, source).parse())


SUCCESS = Condition("success()", Call("success"))
ALWAYS = Condition("always()", Call("always"))
