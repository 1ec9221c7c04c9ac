"""Where run, checkpoint and export directories live: ONE rule, used by every writer.

Local paths are made absolute (`~` expanded, resolved against the current working directory)
because orbax refuses relative checkpoint paths, and because a run directory printed to the user
must still name the same place after a `cd`. URLs (`gs://…`, `s3://…`, any `scheme://`) are kept
as they are and handled through `etils.epath`, which orbax also uses.
"""

from __future__ import annotations

import os
from pathlib import Path


def is_url(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def resolve_dir(path: str | os.PathLike):
    """Absolute local `Path`, or an `epath.Path` for a URL (unchanged)."""
    if is_url(path):
        from etils import epath

        return epath.Path(os.fspath(path))
    return Path(os.fspath(path)).expanduser().resolve()
