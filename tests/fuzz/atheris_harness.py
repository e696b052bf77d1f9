"""Coverage-guided fuzzing of one target with atheris (libFuzzer for Python).

    python tests/fuzz/atheris_harness.py TARGET [libFuzzer options] [CORPUS_DIR ...]

TARGET is a name from tests/fuzz/targets/__init__.py (trace_context, streams, request_body,
config, redact). Everything after it goes to libFuzzer: e.g. `-max_total_time=600`, `-runs=N`,
`-jobs=4`, `-dict=FILE`, and corpus directories, the first of which receives new inputs (give
it a copy of tests/fuzz/corpus/TARGET, never the directory itself; README.md shows how).

Each input goes through the target's `check_bytes`; an input that runs into a bug listed in
tests/fuzz/known_bugs.py counts as uninteresting, anything else that raises is a crash, which
libFuzzer writes to `crash-<sha1>` (see -artifact_prefix) and reports with its traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import atheris

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fuzz.known_bugs import tolerating_known_bugs  # noqa: E402  (imports nothing of the sidecar)
from tests.fuzz.targets import TARGETS, load  # noqa: E402


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        raise SystemExit(f"usage: {Path(argv[0]).name} TARGET [libFuzzer options] [CORPUS_DIR ...]; targets: {', '.join(TARGETS)}")
    name = argv[1]
    # Instrument the target's code and the parsers it drives: they must be imported for the
    # first time inside this block, which is why nothing above imports the sidecar.
    with atheris.instrument_imports(include=list(TARGETS[name].instrument)):
        target = load(name)
    # The SDK and the parsers log a warning per malformed header or line; millions of inputs
    # would bury libFuzzer's own output.
    logging.disable(logging.CRITICAL)

    def test_one_input(data: bytes) -> None:
        tolerating_known_bugs(target.check_bytes, data)

    atheris.Setup([argv[0], *argv[2:]], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
