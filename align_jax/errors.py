"""Errors a user can fix (config, data, paths, a diverged run): experiments print them as ONE line
and exit 2.

Raise `UserError` (or a subclass) for anything caused by what the user passed: a bad key, a
missing file, a malformed record, an lr that made training diverge. Internal errors stay ordinary
exceptions with tracebacks. `ALIGN_JAX_DEBUG=1` shows the traceback of user errors too.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's config, data or paths; its message is the whole report."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (named key, what was expected)."""


class DataError(UserError, ValueError):
    """A bad record or file. ``str(err)`` names the source file, the location inside it ("line 3"
    for line-oriented files, 1-based; "row 7" for columnar sources, 0-based) and what was
    expected; ``source`` / ``location`` / ``reason`` keep the parts."""

    def __init__(self, message: str, *, source: str | None = None, location: str | None = None):
        self.source = source
        self.location = location
        self.reason = message
        where = ", ".join(p for p in (source, location) if p)
        super().__init__(f"{where}: {message}" if where else message)


class DivergenceError(UserError):
    """Training produced non-finite losses/gradients/weights (usually: lr too large)."""


class CheckpointError(UserError):
    """No checkpoint of a run directory can be restored, or a fresh one failed verification."""


class RunDirBusy(ConfigError):
    """Another live run holds the run directory's lock."""
