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
