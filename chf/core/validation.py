"""One validation layer: a TOML section or a JSON body decoded into a strict `msgspec.Struct`, errors as data.

The shape of every setting and request body is a Struct (`forbid_unknown_fields=True`) whose annotations carry
the rules: bounds (`msgspec.Meta(ge=, le=)`), enums (`Literal`), non-empty strings (`Meta(min_length=1)`),
patterns. `decode(Type, data)` converts with `msgspec.convert(..., strict=True)`: no string is read as a number,
no bool as an integer, no float as an integer. On failure it walks the value field by field, because msgspec
stops at the first error and a person fixing a file wants every one of them at once, and raises `Invalid` with a
`Problem` (path of keys and indices, reason) per fault. The reasons use the project's wording ("must be an
integer >= 1, got 0", "unknown setting (known: ...)", "is required"); a field may state its own expectation
with `Meta(extra=expected("a positive integer"))`.

Two renderers turn problems into what a reader sees: `config_errors` for configuration files
("file: [section] key: message") and `invalid_params` for problem+json bodies (`invalidParams: [{param,
reason}]`, TS 29.571 ProblemDetails). This module sits in the core because the catalogue loader uses it too.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import msgspec
from msgspec import inspect as mi

T = TypeVar("T")
Path = tuple[str | int, ...]

EXPECTED = "expected"  # key of `Meta(extra=...)` with the wording of what a field accepts
_REPR_LIMIT = 60  # characters of an offending value quoted back (a hostile value is not echoed in full)


SECRET = "secret"  # key of `Meta(extra=...)`: the value is never quoted back (tokens, keys)


def expected(text: str, *, secret: bool = False) -> dict[str, Any]:
    """`Meta(extra=expected("a day of the month from 1 to 28"))`: the field's own wording after "must be".
    With `secret=True` the reason does not quote the offending value (a token is not written to a log)."""
    return {EXPECTED: text, SECRET: True} if secret else {EXPECTED: text}


# Annotations shared by several Structs.
NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


@dataclass(frozen=True, slots=True)
class Problem:
    """One fault: where (keys and list indices from the root) and why."""

    path: Path
    reason: str


class Invalid(ValueError):
    """Every problem found in one value."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{format_path(p.path) or '(root)'}: {p.reason}" for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Wording:
    """What the reader calls things: settings in tables (TOML files) or fields in objects (JSON bodies)."""

    unknown: str
    mapping: str
    missing: str = "is required"


CONFIG = Wording(unknown="unknown setting", mapping="a table")
BODY = Wording(unknown="unknown field", mapping="a JSON object")


def decode(type_: type[T], data: Any, wording: Wording = CONFIG) -> T:
    """`data` (parsed TOML or JSON) as a `type_`, or `Invalid` listing every problem."""
    try:
        return msgspec.convert(data, type_, strict=True)
    except msgspec.ValidationError as first:
        problems: list[Problem] = []
        _walk(type_, data, (), problems, wording)
        if not problems:  # a rule the walk does not see (a Struct's __post_init__): msgspec's own report
            problems.append(_from_msgspec(first))
        raise Invalid(problems) from None


# ------------------------------------------------------------------------------------------------------------------
# Renderers
# ------------------------------------------------------------------------------------------------------------------
def format_path(path: Path) -> str:
    """`peers[0].host`: names joined by dots, list indices in brackets; "" for the root."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def config_errors(problems: Iterable[Problem], source: str, section: str) -> list[str]:
    """`file: [section] key: reason`. Names leading to a sub-table extend the section (`[export.files] max_age`,
    `[api.tokens] crm`); from the last name before a list index on, the path is the key (`[gy] peers[0].host`)."""
    lines = []
    for p in problems:
        cut = next((i for i, step in enumerate(p.path) if isinstance(step, int)), len(p.path))
        tables, key = p.path[: max(cut - 1, 0)], p.path[max(cut - 1, 0) :]
        where = ".".join([section, *(str(t) for t in tables)])
        lines.append(
            f"{source}: [{where}] {format_path(key)}: {p.reason}" if key else f"{source}: [{where}]: {p.reason}"
        )
    return lines


def invalid_params(problems: Iterable[Problem], root: str = "body") -> list[dict[str, str]]:
    """TS 29.571 InvalidParam entries. `param` names the field as the API always has (`amount`,
    `rating_groups[1]`); a fault of the whole body is `root`."""
    return [{"param": format_path(p.path) or root, "reason": p.reason} for p in problems]


# ------------------------------------------------------------------------------------------------------------------
# The walk: every problem, in field order
# ------------------------------------------------------------------------------------------------------------------
def _walk(tp: Any, value: Any, path: Path, out: list[Problem], wording: Wording) -> None:
    members = _union_members(tp)
    if value is None and type(None) in members:
        return
    concrete = [m for m in members if m is not type(None)]
    before = len(out)
    if len(concrete) == 1:
        target = _strip_annotated(concrete[0])
        origin = get_origin(target)
        if isinstance(value, dict) and _is_struct(target):
            _walk_struct(target, value, path, out, wording)
        elif isinstance(value, dict) and origin is dict:
            value_type = get_args(target)[1] if get_args(target) else Any
            for key, item in value.items():
                _walk(value_type, item, (*path, key), out, wording)
        elif isinstance(value, list) and origin is list:
            item_type = get_args(target)[0] if get_args(target) else Any
            for i, item in enumerate(value):
                _walk(item_type, item, (*path, i), out, wording)
    if len(out) > before:
        return
    try:
        msgspec.convert(value, tp, strict=True)
    except msgspec.ValidationError as exc:
        out.append(_leaf_problem(tp, value, path, wording, exc))


def _walk_struct(cls: Any, value: dict[Any, Any], path: Path, out: list[Problem], wording: Wording) -> None:
    fields = msgspec.structs.fields(cls)
    names = {f.encode_name for f in fields}
    for key in value:
        if key not in names:
            out.append(Problem((*path, key), f"{wording.unknown} (known: {', '.join(sorted(names))})"))
    for f in fields:
        if f.encode_name in value:
            _walk(f.type, value[f.encode_name], (*path, f.encode_name), out, wording)
        elif f.required:
            out.append(Problem((*path, f.encode_name), wording.missing))


def _leaf_problem(tp: Any, value: Any, path: Path, wording: Wording, exc: msgspec.ValidationError) -> Problem:
    """A value its type refuses: "must be <what the type accepts>, got <value>". A Struct's own check (raised in
    __post_init__) keeps its message."""
    target = _strip_annotated(next((m for m in _union_members(tp) if m is not type(None)), tp))
    if isinstance(value, dict) and _is_struct(target):
        problem = _from_msgspec(exc)
        return Problem((*path, *problem.path), problem.reason)
    if _is_secret(mi.type_info(tp)):
        return Problem(path, f"must be {describe(tp, wording)}")
    return Problem(path, f"must be {describe(tp, wording)}, got {_quote(value)}")


def _from_msgspec(exc: msgspec.ValidationError) -> Problem:
    """msgspec's message and path ("... - at `$.peers[0].host`") as a Problem."""
    text = str(exc)
    message, sep, where = text.rpartition(" - at `")
    if not sep:
        return Problem((), text)
    path: list[str | int] = []
    for part in where.rstrip("`").removeprefix("$").replace("[", ".[").split("."):
        if part.startswith("[") and part[1:-1].isdigit():
            path.append(int(part[1:-1]))
        elif part and part != "[...]":
            path.append(part)
    return Problem(tuple(path), message)


def _is_secret(t: mi.Type) -> bool:
    if isinstance(t, mi.UnionType):
        return any(_is_secret(m) for m in t.types)
    return isinstance(t, mi.Metadata) and bool(t.extra and t.extra.get(SECRET))


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


# ------------------------------------------------------------------------------------------------------------------
# What a type accepts, in words
# ------------------------------------------------------------------------------------------------------------------
def describe(tp: Any, wording: Wording = CONFIG) -> str:
    """What `tp` accepts, to follow "must be": "an integer from 0 to 65535", "one of fsync, os"."""
    info = mi.type_info(tp)
    concrete = [m for m in _union_members(_strip_annotated(tp)) if m is not type(None)]
    if len(concrete) == 1 and get_origin(concrete[0]) is Literal and not isinstance(info, mi.Metadata):
        return "one of " + ", ".join(str(v) for v in get_args(concrete[0]))  # in the order written
    return _describe(info, wording)


def _describe(t: mi.Type, wording: Wording) -> str:
    if isinstance(t, mi.Metadata):
        if t.extra and EXPECTED in t.extra:
            return str(t.extra[EXPECTED])
        return _describe(t.type, wording)
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.IntType):
        return _bounded("an integer", t)
    if isinstance(t, mi.FloatType):
        return _bounded("a number", t)
    if isinstance(t, mi.StrType):
        return _string(t)
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(str(v) for v in t.values)
    if isinstance(t, mi.EnumType):
        return "one of " + ", ".join(str(m.value) for m in t.cls)
    if isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType | mi.TupleType):
        return "a list"
    if isinstance(t, mi.DictType | mi.StructType | mi.DataclassType | mi.TypedDictType):
        return wording.mapping
    if isinstance(t, mi.UnionType):
        return " or ".join(_describe(m, wording) for m in t.types if not isinstance(m, mi.NoneType))
    if isinstance(t, mi.NoneType):
        return "null"
    return "a valid value"


def _bounded(noun: str, t: mi.IntType | mi.FloatType) -> str:
    low = f">= {t.ge}" if t.ge is not None else (f"> {t.gt}" if t.gt is not None else None)
    high = f"<= {t.le}" if t.le is not None else (f"< {t.lt}" if t.lt is not None else None)
    if t.ge is not None and t.le is not None:
        return f"{noun} from {t.ge} to {t.le}"
    return " ".join(part for part in (noun, low, "and" if low and high else None, high) if part)


def _string(t: mi.StrType) -> str:
    if t.pattern is not None:
        return f"a string matching {t.pattern}"
    low, high = t.min_length, t.max_length
    if low == 1 and high is None:
        return "a non-empty string"
    if low and high:
        return f"a string of {low} to {high} characters"
    if low:
        return f"a string of at least {low} characters"
    if high is not None:
        return f"a string of at most {high} characters"
    return "a string"


# ------------------------------------------------------------------------------------------------------------------
# Annotation helpers
# ------------------------------------------------------------------------------------------------------------------
def _union_members(tp: Any) -> tuple[Any, ...]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        return get_args(tp)
    return (tp,)


def _strip_annotated(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)
