"""One error hierarchy and one exit policy for every entry point.

    class DataError(UserError, ValueError): ...      # a problem with what the user gave us

    def main(argv):
        cli.start(argv)
        errors.exit_on_user_error(run, config, workdir)

A :class:`UserError` is something the user can fix without reading our code: a dataset that is
not prepared, a bad CSV row, a checkpoint that does not match its config, a workdir made with
other settings, a bad config value. Every entry point prints it as ONE line on stderr
(``error: <what and where>``) and exits with status 2. Anything else is a bug in this code (or
a library) and keeps its traceback.

Each concrete error also derives from the builtin it used to be (``ValueError``,
``FileNotFoundError``), so callers that caught those still do.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input, a missing file, a mismatched workdir: printed as one line, exit status 2."""


class ConfigError(UserError, ValueError):
    """A config value that is unknown, out of range or inconsistent; names the field."""


class NotFoundError(UserError, FileNotFoundError):
    """A file, folder, checkpoint or dataset the run needs is not where the config says."""


class IncompatibleWorkdirError(UserError, ValueError):
    """The workdir holds results made with other settings (see ``vl_jax.workdir``)."""


def fail(exc: BaseException) -> NoReturn:
    """Prints ``error: <exc>`` on one line (newlines folded) and exits with status 2."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def exit_on_user_error(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)``; a :class:`UserError` becomes one line on stderr and exit 2.

    Other exceptions propagate with their traceback: they are bugs, and the traceback is what
    a maintainer needs."""
    try:
        return fn(*args, **kwargs)
    except UserError as exc:
        fail(exc)
