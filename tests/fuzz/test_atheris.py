"""Each atheris harness, run for a fixed number of inputs from a copy of its seed corpus.

The targets run side by side in child processes (atheris takes over the interpreter it runs
in): each replays its seeds, then tries `FUZZ_ATHERIS_RUNS` mutated inputs (300 by default, a
few seconds for the slowest target). A count, not a time: with the fixed seed, every run tries
the same inputs however busy the machine, and a slow machine only takes longer. In CI (CI=true)
atheris must be installed; elsewhere the file is skipped without it. Longer runs: see README.md.
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
RUNS = int(os.environ.get("FUZZ_ATHERIS_RUNS", "300"))
SEED = int(os.environ.get("FUZZ_ATHERIS_SEED", "1"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    log: Path
    workdir: Path
    runs: int
    """libFuzzer's -runs: the seeds (replayed first) plus RUNS mutated inputs."""

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
        seeds = corpus_files(name)
        for path in seeds:
            shutil.copy(path, corpus / path.name)
        log = workdir / "output.txt"
        runs = len(seeds) + RUNS
        command = [
            sys.executable, str(HARNESS), name,
            f"-runs={runs}",
            # A fixed seed: every run walks the same mutations, so a run fails on what the code
            # does, not on the luck of the draw. FUZZ_ATHERIS_SEED=0 lets libFuzzer pick one, for
            # searching further.
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
        started[name] = Run(process, log, workdir, runs)
    yield started
    for run in started.values():
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


# Only a backstop for a run that never ends (a hang is caught per input by -timeout); a few
# seconds is usual.
_BACKSTOP_S = 300


@pytest.mark.timeout(_BACKSTOP_S + 60)
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_atheris_finds_nothing_new(runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    try:
        status = run.process.wait(timeout=_BACKSTOP_S)
    except subprocess.TimeoutExpired:
        run.process.kill()
        pytest.fail(f"atheris on {name} had not finished {run.runs} runs after {_BACKSTOP_S} s:\n{run.output()[-3000:]}")
    output = run.output()
    crashes = sorted(path.name for path in run.workdir.iterdir() if re.match(r"(crash|timeout|oom|leak)-", path.name))
    assert status == 0 and not crashes, (
        f"atheris on {name} exited {status}; inputs kept in {run.workdir}: {crashes}\n"
        "(add a minimal one to tests/fuzz/corpus/{name}/ as described in README.md)\n" + output[-6000:]
    )
    # Every input was tried: the seeds, and then mutations of them.
    inited = re.search(r"#(\d+)\s+INITED", output)
    done = re.search(r"Done (\d+) runs", output)
    assert inited and done and int(done.group(1)) == run.runs > int(inited.group(1)), output[-2000:]
