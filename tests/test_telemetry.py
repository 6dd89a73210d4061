"""What the package turns off in other libraries for its own use: OpenVINO's telemetry, in a fresh process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(180)

IMPORT_OPENVINO = textwrap.dedent("""
    import json, multiprocessing, os, sys, time, warnings

    forks = []
    real_fork = os.fork
    def counting_fork():
        forks.append(os.getpid())
        return real_fork()
    os.fork = counting_fork  # multiprocessing's fork start method calls os.fork()

    import lancedb  # registers the fork hook that warns
    from lancedb_baai.runtimes.telemetry import openvino_telemetry_off

    first = openvino_telemetry_off()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import openvino
        from openvino.tools.ovc import telemetry_utils
        time.sleep(1.0)  # the telemetry sender works from a thread
    print(json.dumps({
        "first": first, "again": openvino_telemetry_off(), "forks": len(forks),
        "children": len(multiprocessing.active_children()),
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
        "telemetry": telemetry_utils.tm.__name__,
    }))
""")


def run() -> dict:
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed (the openvino extra)")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}  # not a CI run
    proc = subprocess.run([sys.executable, "-c", IMPORT_OPENVINO], capture_output=True,
                          text=True, timeout=150, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RuntimeWarning" not in proc.stderr and "fork" not in proc.stderr, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_openvino_imports_without_telemetry_fork_or_warning():
    seen = run()
    assert seen["forks"] == 0 and seen["children"] == 0, seen  # no telemetry helper process
    assert seen["telemetry"] == "openvino.tools.ovc.telemetry_stub"  # OpenVINO's own no-op stand-in
    assert seen["first"] is True and seen["again"] is True
    assert not [w for w in seen["warnings"] if "RuntimeWarning" in w or "fork" in w], seen["warnings"]


def test_a_process_that_imported_openvino_telemetry_first_keeps_it():
    code = ("import sys, openvino_telemetry\n"
            "from lancedb_baai.runtimes.telemetry import openvino_telemetry_off\n"
            "print(openvino_telemetry_off(), sys.modules['openvino_telemetry'] is openvino_telemetry)\n")
    if importlib.util.find_spec("openvino_telemetry") is None:
        pytest.skip("openvino-telemetry is not installed (the openvino extra)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "True"]  # its choice stands; nothing is sent by this test
