"""The rules' state file: windows and alert states kept across restarts, written atomically.

Layout: one header line `sidecar-rules-state <version>\\n`, then the state as zlib-compressed JSON.
The header is plain text so that a file of another version is recognised, and skipped with a
reason, without guessing at its encoding; zlib's checksum catches a torn or damaged body.

Writes go to a temporary file in the same directory, are fsynced, and replace the old file with
`os.replace` (then the directory is fsynced), so a crash leaves either the old state or the new one,
never half of one. Both calls block on disk: call them from a worker thread.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MAGIC = b"sidecar-rules-state"
FORMAT_VERSION = 1


class StateFileError(ValueError):
    """A state file that exists but cannot be read; the message names the file and what was wrong."""


class StateFile:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.skipped_reason: str | None = None
        """Why the last `load()` returned None although a file was there (another format version)."""

    def save(self, data: Mapping[str, Any]) -> int:
        """Write `data` atomically; returns the file's size in bytes."""
        body = json.dumps(data, separators=(",", ":")).encode()
        content = MAGIC + b" " + str(FORMAT_VERSION).encode() + b"\n" + zlib.compress(body, 6)
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
            raise
        _fsync_directory(directory)
        return len(content)

    def load(self) -> dict[str, Any] | None:
        """The saved state; None when there is none, or it is of another format version (logged, and
        kept in `skipped_reason`). Raises StateFileError when the file is damaged."""
        self.skipped_reason = None
        try:
            content = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateFileError(f"rules state file {self.path}: cannot read it ({exc.strerror or exc})") from None
        header, newline, body = content.partition(b"\n")
        parts = header.split(b" ")
        if not newline or len(parts) != 2 or parts[0] != MAGIC:
            raise StateFileError(f"rules state file {self.path}: not a rules state file "
                                 f"(expected a first line '{MAGIC.decode()} {FORMAT_VERSION}')")  # fmt: skip
        try:
            version = int(parts[1])
        except ValueError:
            raise StateFileError(f"rules state file {self.path}: unreadable format version {parts[1]!r}") from None
        if version != FORMAT_VERSION:
            self.skipped_reason = (f"rules state file {self.path}: format version {version}, this sidecar reads "
                                   f"version {FORMAT_VERSION}; starting with empty windows and no alerts")  # fmt: skip
            logger.warning(self.skipped_reason)
            return None
        try:
            data = json.loads(zlib.decompress(body))
        except (zlib.error, ValueError) as exc:
            raise StateFileError(f"rules state file {self.path}: damaged ({exc})") from None
        if not isinstance(data, dict):
            raise StateFileError(f"rules state file {self.path}: expected a JSON object, got {type(data).__name__}")
        return data


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); where directories cannot be opened, do without."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
