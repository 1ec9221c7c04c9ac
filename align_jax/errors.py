"""Errors a user can fix (config, data, paths): experiments print them as ONE line and exit 2.

Raise `UserError` (or a subclass) for anything caused by what the user passed: a bad key, a
missing file, a malformed record. Internal errors stay ordinary exceptions with tracebacks.
`ALIGN_JAX_DEBUG=1` shows the traceback of user errors too.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's config, data or paths; its message is the whole report."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (named key, what was expected)."""


class DataError(UserError, ValueError):
    """A bad record or file (names file, line/record and field)."""
