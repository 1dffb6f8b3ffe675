"""Command lines generated from dataclass configs, and config validation at the edge.

Every `sherman` subcommand describes its options as a dataclass whose fields carry a one-line docstring
(the string literal right under the field). `parse(Args, argv, prog=...)` builds an argparse parser from
it, so every command has the same help style (description, one line per flag, its type and default)
and the same error style: a bad flag, a value of the wrong type, an unknown option or a failed
`__post_init__` check raises `ShermanError` with one line naming the flag; `sherman/cli.py` prints it and
exits with status 2. Nothing here imports torch, so `--help` and flag errors cost no torch import when the
command's module defers it.

Flag names follow the field names with `_` -> `-`; a nested dataclass field `train: TrainConfig` gives
`--train.batch-size` (or plain `--batch-size` when its name is in `flatten`). Types understood: int,
float, str, bool (`--x` / `--no-x`), `X | None` (the word `None` gives None), `Literal[...]` (choices),
`list[X]` (several values after one flag, or repeat the flag with `Append[list[X]]`), `tuple[X, ...]`
and fixed-length tuples, and nested dataclasses. `Positional[X]` makes a field a positional argument.

Every parser also takes `--threads N` (torch CPU threads, default `DEFAULT_THREADS`), applied by
`apply_threads` before the command does any tensor work.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import os
import re
import sys
import textwrap
import types
import typing
from typing import Annotated, Any, Literal, Sequence, get_args, get_origin

from sherman.core.errors import ShermanError

DEFAULT_THREADS = 1
"""Torch CPU threads when --threads is not given. Measured (README, "Command line"): `sherman train` 100 steps on the
shared 2-core Xeon took 7-8x longer at 2 threads than at 1 whenever other processes used the cores (and 4x longer
beside one busy process in the issue's figures); 2 threads on an idle machine was not measured. The models Sherman
trains on a CPU are small and bound by per-op overhead, which a second thread does not shorten."""


class ConfigError(ShermanError, ValueError):
    """A config field with a bad value. `field` is the dataclass field name; the CLI turns it into the flag.
    Also a ValueError, so callers that validate configs with `except ValueError` keep working."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check(ok: bool, field: str, message: str) -> None:
    """Raise ConfigError(field, message) unless ok (for `__post_init__` validation)."""
    if not ok:
        raise ConfigError(field, message)


class _Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


class Alias(_Marker):
    """`x: Annotated[bool, Alias("--x2")]`: extra option strings for a field's flag; `replace=True`: instead of it."""

    def __init__(self, *flags: str, replace: bool = False):
        super().__init__("alias")
        self.flags = flags
        self.replace = replace


POSITIONAL = _Marker("positional")
APPEND = _Marker("append")


class Positional:
    """`ckpt: Positional[str]`: a positional argument instead of a `--ckpt` flag."""

    def __class_getitem__(cls, t):
        return Annotated[t, POSITIONAL]


class Append:
    """`prompt: Append[list[str]]`: repeat the flag for several values (`--prompt a --prompt b`)."""

    def __class_getitem__(cls, t):
        return Annotated[t, APPEND]


# ------------------------------------------------------------------------------------------ docstrings


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field name: the docstring literal under it} for a dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(src).body[0].body  # type: ignore[attr-defined]
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name):
                if isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str):
                    docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def class_doc(cls: type) -> str:
    doc = cls.__doc__ or ""
    return "" if doc.startswith(cls.__name__ + "(") else inspect.cleandoc(doc)  # dataclass' generated signature


# ------------------------------------------------------------------------------------------ types


def _unwrap(tp: Any) -> tuple[Any, set]:
    markers: set = set()
    while get_origin(tp) is Annotated:
        args = get_args(tp)
        tp, extra = args[0], args[1:]
        markers |= {m for m in extra if isinstance(m, _Marker)}
    return tp, markers


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    return {int: "INT", float: "FLOAT", str: "STR", bool: "BOOL"}.get(tp, getattr(tp, "__name__", "VALUE").upper())


def _converter(tp: Any, optional: bool):
    """A str -> value function for argparse (its __name__ appears in argparse's 'invalid X value' message)."""
    if get_origin(tp) is Literal:
        choices = get_args(tp)

        def conv(s: str):
            for c in choices:
                if str(c) == s:
                    return c
            raise ValueError(s)

        conv.__name__ = "choice"
    elif tp is bool:

        def conv(s: str):
            low = s.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(s)

        conv.__name__ = "bool"
    elif tp in (int, float, str):
        conv = tp
    elif callable(tp):
        conv = tp
    else:  # pragma: no cover - a config author used a type this module does not know
        raise TypeError(f"unsupported CLI field type {tp!r}")
    if not optional:
        return conv

    def opt(s: str):
        return None if s == "None" else conv(s)

    opt.__name__ = getattr(conv, "__name__", "value")
    return opt


def _fmt_default(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v) if v else "(none)"
    return str(v)


# ------------------------------------------------------------------------------------------ parser


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors raise ShermanError (one line) instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise ShermanError(f"{message} (see `{self.prog} --help`)")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=34, width=min(110, max(60, _term_width())))


def _term_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 100


@dataclasses.dataclass
class _Leaf:
    path: tuple[str, ...]
    flag: str
    cls: type


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _field_default(f: dataclasses.Field, owner: Any) -> Any:
    if owner is not None:
        return getattr(owner, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _add_fields(ap: argparse.ArgumentParser, group, cls: type, owner: Any, prefix: str, path: tuple, flatten: Sequence[str], leaves: list,
                exclude: Sequence[str] = ()) -> None:  # fmt: skip
    docs = field_docs(cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or ".".join(path + (f.name,)) in exclude:
            continue
        tp, markers = _unwrap(hints[f.name])
        default = _field_default(f, owner)
        doc = docs.get(f.name, "")
        if dataclasses.is_dataclass(tp):
            sub_owner = default if default is not dataclasses.MISSING else None
            sub_prefix = prefix if f.name in flatten else f"{prefix}{f.name}."
            title = f"{f.name} options" if f.name not in flatten else f"{f.name} options (no prefix)"
            sub = ap.add_argument_group(title, doc or class_doc(tp) or None)
            _add_fields(ap, sub, tp, sub_owner, sub_prefix, path + (f.name,), flatten, leaves, exclude)
            continue
        dest = "__".join(path + (f.name,))
        flag = f"--{prefix}{f.name.replace('_', '-')}"
        leaves.append(_Leaf(path + (f.name,), flag, cls))
        inner, optional = _optional_inner(tp)
        kw: dict[str, Any] = {"dest": dest}
        origin = get_origin(inner)
        metavar = _type_name(inner)
        if origin in (list, tuple):
            args = get_args(inner)
            item = args[0] if args else str
            item, item_opt = _optional_inner(item)
            kw["type"] = _converter(item, item_opt)
            metavar = _type_name(item)
            if APPEND in markers:
                kw["action"] = "append"
            elif origin is tuple and args and args[-1] is not Ellipsis:
                kw["nargs"] = len(args)
            else:
                kw["nargs"] = "+" if default is dataclasses.MISSING and POSITIONAL in markers else "*"
        elif inner is bool and not optional:
            kw["action"] = argparse.BooleanOptionalAction
            metavar = None
        elif origin is Literal:
            kw["type"] = _converter(inner, optional)
            kw["choices"] = list(get_args(inner)) + ([None] if optional else [])
            metavar = "{" + ",".join(str(c) for c in get_args(inner)) + "}"
        else:
            kw["type"] = _converter(inner, optional)
        help_ = doc.replace("%", "%%")
        if default is not dataclasses.MISSING:
            help_ += f" (default: {_fmt_default(default)})".replace("%", "%%")
        kw["help"] = help_ or None
        if POSITIONAL in markers:
            kw.pop("dest")
            if metavar is not None:
                kw["metavar"] = f.name.upper()
            if default is not dataclasses.MISSING:
                kw["default"] = default
                kw.setdefault("nargs", "?")
            group.add_argument(dest, **kw)
            leaves[-1].flag = f.name.upper()
            continue
        if metavar is not None:
            kw["metavar"] = metavar
        if default is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = list(default) if kw.get("action") == "append" else default
            if kw.get("action") == "append":
                kw["default"] = _AppendDefault(default)
        aliases = [a for m in markers if isinstance(m, Alias) for a in m.flags]
        replace = any(m.replace for m in markers if isinstance(m, Alias))
        group.add_argument(*(aliases if replace else [flag, *aliases]), **kw)
        if aliases and replace:
            leaves[-1].flag = aliases[0]


class _AppendDefault(list):
    """A default list that the first `--flag` replaces instead of extending (argparse appends to defaults)."""


def _build(cls: type, ns: dict, owner: Any, path: tuple, leaves: list, prog: str) -> Any:
    kwargs: dict[str, Any] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, _ = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(tp):
            sub_owner = getattr(owner, f.name) if owner is not None else None
            kwargs[f.name] = _build(tp, ns, sub_owner, path + (f.name,), leaves, prog)
            continue
        key = "__".join(path + (f.name,))
        if key not in ns:  # an excluded field keeps its default
            d = _field_default(f, owner)
            if d is not dataclasses.MISSING:
                kwargs[f.name] = d
            continue
        v = ns[key]
        if isinstance(v, _AppendDefault):
            v = list(v)
        elif isinstance(v, list) and get_origin(_optional_inner(tp)[0]) is tuple:
            v = tuple(v)
        kwargs[f.name] = v
    try:
        return cls(**kwargs)
    except ConfigError as e:
        flag = next((lf.flag for lf in leaves if lf.path == path + (e.field,)), e.field)
        raise ShermanError(f"{flag}: {e.message}") from None
    except (ShermanError, ValueError, TypeError, AssertionError) as e:
        where = ("--" + ".".join(path) + " options") if path else "options"
        raise ShermanError(f"invalid {where}: {e}") from None


def build_parser(cls: type, prog: str, description: str | None = None, default: Any = None, flatten: Sequence[str] = (),
                 epilog: str | None = None, exclude: Sequence[str] = ()) -> tuple[ArgumentParser, list]:  # fmt: skip
    """The argparse parser for dataclass `cls` (defaults from `default` when given) and its leaf fields."""
    desc = description if description is not None else class_doc(cls)
    ap = ArgumentParser(prog=prog, description=desc or None, epilog=epilog, formatter_class=_HelpFormatter, allow_abbrev=False)
    leaves: list = []
    _add_fields(ap, ap, cls, default, "", (), flatten, leaves, exclude)
    if "threads" not in {f.name for f in dataclasses.fields(cls)}:
        ap.add_argument("--threads", type=int, default=None, metavar="INT",
                        help=f"torch CPU threads, set before any tensor work (default: {DEFAULT_THREADS}; measured, see README)")  # fmt: skip
    return ap, leaves


def parse(cls: type, argv: Sequence[str], prog: str, description: str | None = None, default: Any = None,
          flatten: Sequence[str] = (), epilog: str | None = None, exclude: Sequence[str] = ()) -> Any:  # fmt: skip
    """Parse argv into an instance of dataclass `cls`; `--help` prints help and raises SystemExit(0).

    `default`: an instance whose values are the defaults; `flatten`: nested fields whose flags have no prefix;
    `exclude`: dotted field paths not offered as flags (they keep their default, e.g. one set by the command).
    A usage error or a failed config check raises ShermanError naming the flag. Applies --threads."""
    ap, leaves = build_parser(cls, prog, description, default, flatten, epilog, exclude)
    ns = vars(ap.parse_args(list(argv)))
    threads = ns.pop("threads", None)
    out = _build(cls, ns, default, (), leaves, prog)
    apply_threads(getattr(out, "threads", None) if threads is None else threads)
    return out


def apply_threads(n: int | None) -> int:
    """Set torch's intra-op (and, when still possible, inter-op) thread count; None = DEFAULT_THREADS.

    Before torch is imported the OpenMP/MKL environment variables are set too, so its pools start at this size."""
    n = DEFAULT_THREADS if n is None else int(n)
    if n < 1:
        raise ShermanError(f"--threads: must be >= 1, got {n}")
    if "torch" not in sys.modules:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already set, or inter-op work already started: the intra-op count is what matters here
        pass
    return n


# ------------------------------------------------------------------------------------------ type checks


def check_types(obj: Any) -> None:
    """Raise ConfigError naming the first field of dataclass `obj` whose value does not match its annotation
    (int, float, str, bool, X | None, Literal, list/tuple of those). For configs read from JSON files."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        tp, _ = _unwrap(hints[f.name])
        if not _matches(v, tp):
            raise ConfigError(f.name, f"expected {_describe(tp)}, got {type(v).__name__} {v!r:.40}")


def _matches(v: Any, tp: Any) -> bool:
    inner, optional = _optional_inner(tp)
    if v is None:
        return optional or tp is Any
    tp = inner
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return v in get_args(tp)
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is str:
        return isinstance(v, str)
    if origin in (list, tuple):
        if not isinstance(v, (list, tuple)):
            return False
        args = get_args(tp)
        if not args:
            return True
        if origin is tuple and args[-1] is not Ellipsis:
            return len(v) == len(args) and all(_matches(x, a) for x, a in zip(v, args))
        return all(_matches(x, args[0]) for x in v)
    if origin is dict:
        return isinstance(v, dict)
    if isinstance(tp, type):
        return isinstance(v, tp)
    return True


def _describe(tp: Any) -> str:
    inner, optional = _optional_inner(tp)
    if get_origin(inner) is Literal:
        s = "one of " + ", ".join(repr(a) for a in get_args(inner))
    elif get_origin(inner) in (list, tuple):
        s = f"a list of {_describe(get_args(inner)[0]) if get_args(inner) else 'values'}"
    else:
        s = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(inner, getattr(inner, "__name__", str(inner)))
    return s + (" or null" if optional else "")


def parse_size(s: str | int) -> int:
    """'5GB', '200MB', '10KB' or a byte count -> bytes."""
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", s, flags=re.IGNORECASE)
    if not m:
        raise ShermanError(f"cannot parse size {s!r} (use e.g. 5GB, 200MB, 1000000)")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * mult)


def module_doc(module: str) -> str:
    """The docstring of `module`, read from its source without importing it (a command's `--help` may quote a
    library module's docstring without paying for that module's imports, e.g. torch)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return ""
    with open(spec.origin, encoding="utf-8") as f:
        return ast.get_docstring(ast.parse(f.read())) or ""
