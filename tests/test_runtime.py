from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from sidecar.config import ConfigError, load_config
from sidecar.runtime import tune_interpreter
from tests.support.process import SidecarProcess
from tests.support.upstream import TestUpstream


@pytest.fixture
def restore_switch_interval():
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_the_switch_interval_is_shortened_to_the_configured_value(restore_switch_interval):
    tune_interpreter(load_config(None, env={}).runtime)
    assert sys.getswitchinterval() == pytest.approx(0.0005)
    tune_interpreter(load_config(None, env={"SIDECAR_RUNTIME__SWITCH_INTERVAL": "2ms"}).runtime)
    assert sys.getswitchinterval() == pytest.approx(0.002)


@pytest.mark.parametrize("value", ["0", "1s", "soon"])
def test_a_switch_interval_out_of_range_names_the_key(value):
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={"SIDECAR_RUNTIME__SWITCH_INTERVAL": value})
    assert "runtime.switch_interval" in str(caught.value)


# Freezing is process-wide, so it is tried in a child rather than in the test runner's heap.
_SETTLE = textwrap.dedent(
    """
    import gc, json, sys, weakref
    from sidecar.config import load_config
    from sidecar.runtime import settle_heap

    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    garbage = cycle()                  # start-up garbage: unreachable, only a cycle keeps it
    kept = Node()
    env = {"SIDECAR_RUNTIME__GC_FREEZE": sys.argv[1]}
    frozen = settle_heap(load_config(None, env=env).runtime)
    after = cycle()                    # garbage made while serving
    gc.collect()
    print(json.dumps({"frozen": frozen, "garbage_freed": garbage() is None,
                      "kept_frozen": id(kept) not in {id(o) for o in gc.get_objects()},
                      "later_garbage_freed": after() is None}))
    """
)


def _settle(enabled: str) -> dict:
    result = subprocess.run([sys.executable, "-c", _SETTLE, enabled], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_settling_collects_start_up_garbage_then_freezes_the_rest():
    state = _settle("true")
    assert state["garbage_freed"]
    assert state["frozen"] > 10_000  # the config models and their imports at least
    assert state["kept_frozen"]  # out of the collector's generations
    assert state["later_garbage_freed"]  # what requests make is still collected


def test_settling_can_be_turned_off():
    state = _settle("false")
    assert state == {"frozen": 0, "garbage_freed": True, "kept_frozen": False, "later_garbage_freed": True}


async def test_sidecar_run_freezes_its_heap_once_serving(tmp_path):
    upstream = TestUpstream()
    await upstream.start()
    process = SidecarProcess(upstream.url, tmp_path, env={"SIDECAR_LOG__LEVEL": "debug"})
    try:
        await process.start()
    finally:
        await process.stop()
        await upstream.stop()
    lines = [json.loads(line) for line in process.log.splitlines() if line.startswith("{")]
    (frozen,) = [line for line in lines if line["message"] == "start-up heap frozen"]
    assert frozen["objects"] > 10_000
