"""Each atheris harness, run for a few seconds from a copy of its seed corpus.

The targets run side by side in child processes (atheris takes over the interpreter it runs
in), `FUZZ_ATHERIS_SECONDS` each (4 by default), so the whole file takes about that long plus
the interpreters' start. In CI (CI=true) atheris must be installed; elsewhere the file is
skipped without it. Longer runs: see README.md.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fuzz.support import FUZZ_DIR, corpus_files
from tests.fuzz.targets import TARGETS

HARNESS = FUZZ_DIR / "atheris_harness.py"
SECONDS = int(os.environ.get("FUZZ_ATHERIS_SECONDS", "4"))
SEED = int(os.environ.get("FUZZ_ATHERIS_SEED", "1"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    log: Path
    workdir: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    if importlib.util.find_spec("atheris") is None:
        if IN_CI:
            pytest.fail("atheris is not installed, and CI must run the coverage-guided fuzzers (pip install atheris)")
        pytest.skip("atheris is not installed (pip install atheris); CI runs these")
    started: dict[str, Run] = {}
    for name in TARGETS:
        workdir = tmp_path_factory.mktemp(f"atheris-{name}")
        corpus = workdir / "corpus"  # a copy: what atheris finds is written here, not into the repo
        corpus.mkdir()
        for path in corpus_files(name):
            shutil.copy(path, corpus / path.name)
        log = workdir / "output.txt"
        command = [
            sys.executable, str(HARNESS), name,
            f"-max_total_time={SECONDS}",
            # A fixed seed: every run walks the same mutations (as far as its time allows), so a
            # run fails on what the code does, not on the luck of the draw. FUZZ_ATHERIS_SEED=0
            # lets libFuzzer pick one, for searching further.
            f"-seed={SEED}",
            "-timeout=10",  # seconds per input: a hang (an alias bomb, a backtracking regex) is a crash
            "-rss_limit_mb=2048",
            "-max_len=8192",
            f"-artifact_prefix={workdir}/",
            "-print_final_stats=1",
            str(corpus),
        ]  # fmt: skip
        with log.open("wb") as sink:
            process = subprocess.Popen(command, cwd=workdir, stdout=sink, stderr=subprocess.STDOUT)
        started[name] = Run(process, log, workdir)
    yield started
    for run in started.values():
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_atheris_finds_nothing_new(runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    try:
        status = run.process.wait(timeout=SECONDS + 90)
    except subprocess.TimeoutExpired:
        run.process.kill()
        pytest.fail(f"atheris on {name} did not stop after {SECONDS} s of fuzzing:\n{run.output()[-3000:]}")
    output = run.output()
    crashes = sorted(path.name for path in run.workdir.iterdir() if re.match(r"(crash|timeout|oom|leak)-", path.name))
    assert status == 0 and not crashes, (
        f"atheris on {name} exited {status}; inputs kept in {run.workdir}: {crashes}\n"
        "(add a minimal one to tests/fuzz/corpus/{name}/ as described in README.md)\n" + output[-6000:]
    )
    done = re.search(r"Done (\d+) runs", output)
    assert done and int(done.group(1)) > len(corpus_files(name)), output[-2000:]
