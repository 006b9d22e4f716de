"""Checks of a user's plain values, all failing with one message format:

    {key}={value!r} {problem} (allowed: {allowed})

e.g. `optim.momentum=-1 is not allowed (allowed: 0 <= x < 1)`, `bs=0 is not a positive integer
(allowed: an integer >= 1)`. `problem` is "is not a positive integer / number" where the allowed
values are exactly those, "is not an integer / a number / a finite number" for a value of the wrong
kind, and "is not allowed" otherwise. Each check returns the value, so it can be used inline.

No torch and no Hydra here (OmegaConf only to print its lists): `runners.validate` checks the
config's plain values with these before it imports torch, and the building blocks (optimizers,
norms, lr schedules) check their own settings with them, so they fail the same way when used
without a config.
"""

import math
import numbers
from collections.abc import Sequence
from typing import NoReturn

from omegaconf import OmegaConf

from bench.errors import UserError, choices


def show(value) -> str:
    """How a value appears in a message: repr, with OmegaConf's lists and dicts as plain ones."""
    return repr(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def fail(key: str, value, problem: str, allowed: str) -> NoReturn:
    raise UserError(f"{key}={show(value)} {problem} (allowed: {allowed})")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def require_int(key: str, value, lo: int | None = None, hi: int | None = None, *,
                or_words: Sequence[str] = ()) -> int | str:
    """An integer (not a bool) with lo <= value <= hi (None: no bound), or one of `or_words`
    (e.g. 'auto')."""
    if value in or_words and isinstance(value, str):
        return value
    if lo is not None and hi is not None:
        allowed = f"an integer {lo}..{hi}"
    elif lo is not None or hi is not None:
        allowed = f"an integer {'>=' if lo is not None else '<='} {lo if lo is not None else hi}"
    else:
        allowed = "an integer"
    if or_words:
        allowed = f"{', '.join(or_words)}, or {allowed}"
    positive = lo == 1 and hi is None and not or_words
    if not _is_int(value):
        fail(key, value, "is not a positive integer" if positive else "is not an integer", allowed)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        fail(key, value, "is not a positive integer" if positive else "is not allowed", allowed)
    return value


def number_range(gt=None, ge=None, lt=None, le=None) -> str:
    """'> 0', '>= 0', '0 <= x < 1': the allowed range as a message shows it ('' for no bound)."""
    lower = f"{gt} <" if gt is not None else f"{ge} <=" if ge is not None else None
    upper = f"< {lt}" if lt is not None else f"<= {le}" if le is not None else None
    if lower and upper:
        return f"{lower} x {upper}"
    one_sided = [(">", gt), (">=", ge), ("<", lt), ("<=", le)]
    return next((f"{op} {bound}" for op, bound in one_sided if bound is not None), "")


def require_number(key: str, value, *, gt=None, ge=None, lt=None, le=None, finite: bool = True,
                   null: str | None = None):
    """A real number (an int is one, a bool is not) within the bounds given (gt: > gt, ge: >= ge,
    lt: < lt, le: <= le). NaN never passes; +-inf passes only with finite=False and the bounds.
    `null`: None is allowed too, and the message says what it means ("a cumulative average")."""
    if value is None and null is not None:
        return value
    allowed = number_range(gt, ge, lt, le) or ("a finite number" if finite else "a number")
    allowed += f", or null for {null}" if null is not None else ""
    positive = gt == 0 and ge is None and lt is None and le is None
    if not _is_number(value):
        fail(key, value, "is not a positive number" if positive else "is not a number", allowed)
    if math.isnan(value) or (finite and math.isinf(value)):
        fail(key, value, "is not a finite number", allowed)
    if ((gt is not None and not value > gt) or (ge is not None and not value >= ge)
            or (lt is not None and not value < lt) or (le is not None and not value <= le)):
        fail(key, value, "is not a positive number" if positive else "is not allowed", allowed)
    return value


def _yaml(v) -> str:
    """A choice as it is typed on the command line: true, false, null, auto."""
    return {True: "true", False: "false", None: "null"}.get(v, str(v)) if not _is_number(v) else str(v)


def require_choice(key: str, value, allowed: Sequence):
    """One of `allowed`, compared with its type: 1 is not `true` and 0.0 is not `0`."""
    if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
        fail(key, value, "is not allowed", ", ".join(_yaml(a) for a in allowed))
    return value


def require_bool(key: str, value) -> bool:
    return require_choice(key, value, (True, False))


def require_numbers(key: str, values, lengths: Sequence[int], note: str = "", **bounds) -> list:
    """A list of `lengths[i]` numbers (e.g. 1 or C entries), each within `bounds` (as
    require_number's); an entry's error names it as key[i]. `note` says why those lengths."""
    lengths = sorted(set(lengths))
    counts = " or ".join(map(str, lengths)) + (" entry" if lengths == [1] else " entries")
    if isinstance(values, str) or not isinstance(values, Sequence):  # a ListConfig is a Sequence
        fail(key, values, "is not a list of numbers", f"a list of {counts}")
    values = list(values)
    if len(values) not in lengths:
        fail(key, values, f"has {len(values)} {'entry' if len(values) == 1 else 'entries'}{note}",
             counts)
    for i, v in enumerate(values):
        require_number(f"{key}[{i}]", v, **bounds)
    return values


def require_name(kind: str, value, allowed) -> str:
    """A registry's short name (`norm`, `optim`, `task.gen_norm`, ...): `unknown {kind} '{value}'
    (allowed: ...)`, the one wording for a name that is not one of the choices."""
    if value not in allowed:
        raise UserError(f"unknown {kind} '{value}' (allowed: {choices(allowed)})")
    return value


def require_known_settings(group: str, name: str, given, allowed) -> None:
    """Every key of `given` (a component's settings) is one that `name` of `group` takes:
    `unknown setting norm.grups for norm 'gn' (allowed: affine, eps, groups)`."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise UserError(f"unknown setting {group}.{unknown[0]} for {group} '{name}' "
                        f"(allowed: {choices(allowed) or 'none'})")
