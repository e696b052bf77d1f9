"""service.instance.id: a UUID made once per data directory and kept there."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

INSTANCE_ID_FILE = "service-instance-id"


def stable_instance_id(data_dir: Path) -> str:
    """The UUID in `<data_dir>/service-instance-id`, made (version 4) the first time it is asked for.

    `stable_instance_id(Path("/var/lib/inference-sidecar"))  # the same UUID after every restart`

    Raises ValueError, naming the file, when it cannot be read or written or holds no UUID.
    """
    path = data_dir / INSTANCE_ID_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return _created(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the service.instance.id kept there: {exc}") from None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ValueError(
            f"{path}: expected a UUID (this sidecar's service.instance.id), found {text[:40]!r}; "
            "remove the file to have a new one made"
        ) from None


def _created(path: Path) -> str:
    made = str(uuid.uuid4())
    # Written aside and renamed into place: a crash never leaves half an id behind.
    aside = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        aside.write_text(made + "\n", encoding="ascii")
        os.replace(aside, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            aside.unlink(missing_ok=True)
        raise ValueError(f"{path}: cannot keep the service.instance.id there: {exc.strerror or exc}") from None
    return made
