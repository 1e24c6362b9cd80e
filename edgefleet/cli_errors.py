"""The exit codes of every `edgefleet` command, and the one place errors become them.

    0    success
    1    the command ran and the operation failed: the fleet or a service refused it, nothing
         matched, no such resource
    2    bad usage or bad input: a flag, a file or a config that does not fit (argparse's too)
    3    could not talk to the fleet, the broker or a device: unreachable, no answer in time,
         credentials refused
    130  interrupted (Ctrl-C)

A command's `main` is decorated with `@cli_errors("edgefleet NOUN")`: the errors edgefleet raises
on purpose are printed on stderr as one line (`edgefleet NOUN: what happened`) and become their
code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from typing import ParamSpec

from edgefleet.fleet.errors import FleetError, FleetUnreachable
from shared.errors import (
    ConfigError,
    EdgefleetError,
    ModelError,
    PayloadError,
    ProtocolError,
    TopicError,
)

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
INTERRUPTED = 130

P = ParamSpec("P")


class UsageError(EdgefleetError):
    """Bad usage the parser cannot see (two flags that exclude each other, a missing file): 2."""


class Failed(EdgefleetError):
    """The command ran and the operation failed or found nothing: 1."""


def exit_code(exc: EdgefleetError) -> int:
    """The exit code of an error raised on purpose (the table above)."""
    if isinstance(exc, FleetUnreachable | ProtocolError):
        return UNREACHABLE
    if isinstance(exc, UsageError | ConfigError | PayloadError | TopicError | ModelError):
        return USAGE
    return FAILED  # FleetError (the fleet refused), Refused, and the rest


def describe(exc: EdgefleetError) -> str:
    if isinstance(exc, FleetError) and not isinstance(exc, FleetUnreachable):
        return f"{exc.message} [{exc.code}]"  # the code is what a script branches on
    return str(exc) or type(exc).__name__


def _leaves(group: BaseExceptionGroup[EdgefleetError]) -> Iterator[EdgefleetError]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def cli_errors(prog: str) -> Callable[[Callable[P, int]], Callable[P, int]]:
    """Decorate a command's `main`: edgefleet's errors become one stderr line and an exit code."""

    def decorate(main: Callable[P, int]) -> Callable[P, int]:
        @functools.wraps(main)
        def run(*args: P.args, **kwargs: P.kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except EdgefleetError as exc:
                print(f"{prog}: {describe(exc)}", file=sys.stderr)
                return exit_code(exc)
            except ExceptionGroup as group:  # raised inside a service's TaskGroup
                known, other = group.split(EdgefleetError)
                if other is not None:
                    raise
                assert known is not None
                errors = list(_leaves(known))
                for error in errors:
                    print(f"{prog}: {describe(error)}", file=sys.stderr)
                return max(exit_code(e) for e in errors)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return INTERRUPTED

        return run

    return decorate
