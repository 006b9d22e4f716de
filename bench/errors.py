"""The one exception type for a user's mistake.

Anything raised as `UserError` is reported as a single line naming the bad value and the allowed
ones, with a non-zero exit and no traceback (see `bench.run`). Everything else is a bug or a crash
and keeps its traceback.
"""


class UserError(Exception):
    """A bad value in what the user asked for: a config value, a missing dataset, a bad URL."""


def choices(allowed) -> str:
    """'a, b, c' for an error message; sorted so messages are stable."""
    return ", ".join(sorted(str(a) for a in allowed))


class Diverged(Exception):
    """A training loss became NaN or infinite: the run ends as 'diverged' and the sweep goes on."""


def squash(text: str) -> str:
    """`text` on one line: every run of whitespace, newlines included, becomes one space."""
    return " ".join(str(text).split())


def one_line(e: BaseException, with_type: bool = True) -> str:
    """`e` as one line for an error message: 'TypeName: message' (or just the message when
    `with_type` is false; just the type name when the message is empty).

    A database driver's error wrapped by SQLAlchemy (`e.orig`) is shown as the driver's own
    message: SQLAlchemy's wrapper adds the SQL statement and a link, which a user cannot act on."""
    orig = getattr(e, "orig", None)
    if isinstance(orig, BaseException):
        e = orig
    text = squash(e)
    if not with_type:
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
