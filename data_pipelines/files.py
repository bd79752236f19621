"""Atomic file writes: a temp file in the same directory, then a rename.

Readers (a resumed run, a user opening a report) see the old file or the new
one, never half of one, and a failure leaves no temp file behind. The file
gets the permissions a plain ``open`` would have given it, not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Calls ``write(binary_file)`` on a temp file beside ``path``, then renames it over ``path``
    with mode 0666 & ~umask (as ``open`` would create it)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
        give_default_mode(temporary)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    write_atomically(path, lambda file: file.write(text.encode()))


def write_json_atomically(path: str | os.PathLike, value: Any, default: Callable[[Any], Any] | None = None) -> None:
    write_text_atomically(path, json.dumps(value, indent=2, default=default) + "\n")


def give_default_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """The permissions a plain ``open`` (``mkdir``) would have given: ``mkstemp``'s 0600 (``mkdtemp``'s 0700)
    suits a temp name, not a file handed on to others."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _umask() -> int:
    """The process umask, read without changing it where Linux allows: ``os.umask`` can only be read by setting
    it, and for that moment files other threads create (orbax's async checkpoint writes) would get umask 0."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)  # the briefest exposure errs towards private, not world-writable
    os.umask(mask)
    return mask
