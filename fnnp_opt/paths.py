"""The rule for writing a path that may not exist yet: its nearest existing parent must be a folder this user can
write (create entries in). Output folders, storage files and artifact stores are checked by it before anything
is written, each naming the option to change."""

from __future__ import annotations

import os
from pathlib import Path

NOT_A_FOLDER = "is not a folder"
NOT_WRITABLE = "is not writable for this user"


def nearest_parent(path: Path) -> tuple[Path, str | None]:
    """The nearest existing parent of ``path`` (its parent, or the first ancestor that exists), and why ``path``
    cannot be made under it: :data:`NOT_A_FOLDER` (a file, say), :data:`NOT_WRITABLE`, or None when it can."""
    parent = Path(path).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return parent, NOT_A_FOLDER
    if not os.access(parent, os.W_OK | os.X_OK):
        return parent, NOT_WRITABLE
    return parent, None
