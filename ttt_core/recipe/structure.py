"""Structuring TOML tables into attrs configs with cattrs: strict TOML types, one message per problem.

attrs validators stop at the first field that fails; `structure_options` runs every validator again
on its own so that `ttt validate` reports every bad option of a table, one line each.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from typing import Any

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ForbiddenExtraKeysError,
    IterableValidationNote,
)

from ttt_core.errors import did_you_mean


def _strict(expected: type, label: str):
    def hook(value: Any, _type: Any) -> Any:
        ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise TypeError(f"expected {label}, got {describe(value)}")
        return value

    return hook


def describe(value: Any) -> str:
    """`float 2.5`, `string "one"`, `table`: how a TOML value is named in messages."""
    kinds = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    kind = kinds.get(type(value), type(value).__name__)
    shown = json.dumps(value) if isinstance(value, (str, int, float, bool)) else ""
    return f"{kind} {shown}".strip()


def _array(value: Any, type_: Any) -> None:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"expected an array, got {describe(value)}")
    args = typing.get_args(type_)
    if typing.get_origin(type_) is tuple and args and Ellipsis not in args and len(value) != len(args):
        raise TypeError(f"expected an array of {len(args)} values, got {len(value)}")


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(int, _strict(int, "an integer"))
    converter.register_structure_hook(float, _strict(float, "a number"))
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(bool, _strict(bool, "a boolean (true or false)"))
    # a flag that also takes a word (`compile = "auto"`): either passes, the field's validator decides
    converter.register_structure_hook_func(lambda t: t == (bool | str), lambda value, _t: value)
    # a string is iterable: without this, paths = "x" would become ["x"] letter by letter; the
    # type check runs first, then cattrs' own list/tuple handling (of a copy without this hook)
    plain = converter.copy()
    converter.register_structure_hook_func(
        lambda t: typing.get_origin(t) in (list, tuple),
        lambda value, t: _array(value, t) or plain.structure(value, t),
    )
    return converter


CONVERTER = make_converter()


def _flatten(exc: BaseException, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], BaseException]]:
    if isinstance(exc, BaseValidationError):
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", []):
                if isinstance(note, AttributeValidationNote):
                    sub_path = (*path, note.name)
                elif isinstance(note, IterableValidationNote):
                    sub_path = (*path, str(note.index))
            yield from _flatten(sub, sub_path)
    else:
        yield path, exc


def structure_options(cls: type, data: Any) -> tuple[Any, list[str]]:
    """Structure `data` into the attrs class `cls`; return (instance or None, problems)."""
    if not isinstance(data, dict):
        return None, [f"expected a table, got {describe(data)}"]
    try:
        return CONVERTER.structure(data, cls), []
    except BaseValidationError as exc:
        errors = list(_flatten(exc, ()))
        if len(errors) == 1 and errors[0][0] == () and _raised_by_init(errors[0][1]):
            # every option structured; a validator or __attrs_post_init__ refused one
            return None, _every_validator_problem(cls, data) or [str(errors[0][1])]
        problems = []
        for path, error in errors:
            problems.extend(_problem_lines(cls, path, error))
        return None, problems
    except (ValueError, TypeError, ArithmeticError) as exc:  # validators outside detailed validation
        return None, _every_validator_problem(cls, data) or [str(exc)]


def _raised_by_init(error: BaseException) -> bool:
    return isinstance(error, (ValueError, TypeError, ArithmeticError)) and not isinstance(
        error, (KeyError, ForbiddenExtraKeysError)
    )


def _every_validator_problem(cls: type, data: dict[str, Any]) -> list[str]:
    """Each field's validator run on its own (attrs stops at the first that fails): their messages,
    or [] when the instance cannot be made even without validators (the first message then stands)."""
    try:
        with attrs.validators.disabled():
            instance = CONVERTER.structure(data, cls)
    except Exception:  # noqa: BLE001 - __attrs_post_init__ of invalid values: keep the first message
        return []
    problems = []
    for field in attrs.fields(cls):
        if field.validator is None:
            continue
        try:
            field.validator(instance, field, getattr(instance, field.name))
        except (ValueError, TypeError, ArithmeticError) as exc:
            problems.append(str(exc))
    return problems


def _problem_lines(cls: type, path: tuple[str, ...], error: BaseException) -> list[str]:
    if isinstance(error, ForbiddenExtraKeysError):
        known = [f.name for f in attrs.fields(error.cl)]
        return [
            f"unknown option '{key}'{did_you_mean(key, known)}" for key in sorted(error.extra_fields)
        ]
    where = f"option '{'.'.join(path)}'" if path else ""
    if isinstance(error, KeyError):
        return [f"missing required {where or 'option'}"]
    message = str(error)
    if where and not message.startswith("option '"):
        message = f"{where}: {message}"
    return [message]


def options_of(cls: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) of each option of a component config, for `ttt list`."""
    rows = []
    for field in attrs.fields(cls):
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        elif default is attrs.NOTHING:
            default = "(required)"
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        rows.append((field.name, str(kind), default))
    return rows


def describe_validator(validator: Any) -> str | None:
    """What values a validator allows, for `ttt list`: our validators' `allowed`, attrs' own
    (`in_`, `and_`, `optional`), else the first line of its docstring."""
    if validator is None:
        return None
    allowed = getattr(validator, "allowed", None)
    if isinstance(allowed, str):
        return allowed
    options = getattr(validator, "options", None)
    if options is not None:
        return "one of: " + ", ".join(map(str, options))
    inner = getattr(validator, "_validators", None)
    if inner is not None:
        parts = [d for d in map(describe_validator, inner) if d]
        return "; ".join(parts) or None
    wrapped = getattr(validator, "validator", None)
    if wrapped is not None:
        described = describe_validator(wrapped)
        return f"{described}, or none" if described else None
    doc = getattr(validator, "__doc__", None)
    if doc and not isinstance(validator, type) and type(validator).__doc__ != doc:
        return doc.strip().splitlines()[0]
    return None


def option_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of an attrs class (and its bases), read from the source:
    attrs keeps no field docstrings. {} where the source is not available."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, after in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[stmt.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs
