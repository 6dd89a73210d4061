"""dtype "auto": one answer per host in every process, loaded or idle; overridable; explained."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import lancedb_baai
from lancedb_baai.runtimes import device as _device
from lancedb_baai.cli import app

# What a fresh process decides: on this host as it is, and on this host with native bf16
# flags reported (the old per-process timing flipped on exactly such hosts under load).
_DECIDE = """
import json, lancedb_baai.runtimes.device as d
real = d.auto_dtype("cpu")
d.cpu_bf16_report.cache_clear()
d._cpu_flags = lambda: {"avx512_bf16", "amx_bf16"}
native = d.auto_dtype("cpu")
print(json.dumps([real, native]))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ten_fresh_processes_under_load_agree():
    env_free = {k: v for k, v in os.environ.items() if k != _device.DTYPE_ENV}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        workers = [subprocess.Popen([sys.executable, "-c", _DECIDE], stdout=subprocess.PIPE, text=True,
                                    env=env_free) for _ in range(10)]
        answers = []
        for worker in workers:
            out, _ = worker.communicate(timeout=300)
            assert worker.returncode == 0
            answers.append(json.dumps(json.loads(out)))
    finally:
        for process in busy:
            process.kill()
            process.wait(timeout=60)

    assert len(answers) == 10 and len(set(answers)) == 1, set(answers)
    (real_dtype, real_reason), (native_dtype, native_reason) = json.loads(answers[0])
    assert (real_dtype, real_reason) == _device.auto_dtype("cpu")
    assert "avx512_bf16, amx_bf16" in native_reason and native_dtype in native_reason


@pytest.fixture
def fresh_report():
    """The per-process answer computed anew, and forgotten after the test."""
    _device.cpu_bf16_report.cache_clear()
    yield
    _device.cpu_bf16_report.cache_clear()


def test_the_decision_follows_the_cpu_flags_and_the_backend(monkeypatch, fresh_report):
    monkeypatch.delenv(_device.DTYPE_ENV, raising=False)
    cases = [(set(), None, "float32"), ({"avx512_bf16"}, False, "float32"), ({"amx_bf16"}, True, "bfloat16")]
    for flags, backend, expected in cases:
        monkeypatch.setattr(_device, "_cpu_flags", lambda flags=flags: flags)
        monkeypatch.setattr(_device, "_onednn_bf16", lambda backend=backend: backend)
        _device.cpu_bf16_report.cache_clear()
        dtype, reason = _device.auto_dtype("cpu")
        assert dtype == expected and reason.endswith(expected), (flags, backend, reason)
    assert _device.auto_dtype("cuda:0")[0] == "float16" and _device.auto_dtype("mps")[0] == "float32"


def test_a_onednn_cap_below_bf16_means_no_native_bf16(monkeypatch, fresh_report):
    """``ONEDNN_MAX_CPU_ISA=AVX2`` on a bf16 CPU: the AVX2 class, so "auto" is float32 and OpenVINO bf16 is not native."""
    monkeypatch.setattr(_device, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    monkeypatch.setattr(_device, "_onednn_bf16", lambda: True)
    monkeypatch.delenv(_device.DTYPE_ENV, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert _device.native_bf16_flags() == ("avx512_bf16",) and _device.auto_dtype("cpu")[0] == "bfloat16"
    for cap, native in (("AVX2", ()), ("avx512_core_vnni", ()), ("AVX512_CORE_BF16", ("avx512_bf16",))):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        _device.cpu_bf16_report.cache_clear()
        assert _device.native_bf16_flags() == native, cap
        assert _device.auto_dtype("cpu")[0] == ("bfloat16" if native else "float32"), cap


def test_environment_variable_overrides_auto_only(monkeypatch):
    monkeypatch.delenv(_device.DTYPE_ENV, raising=False)
    host = _device.auto_dtype("cpu")
    monkeypatch.setenv(_device.DTYPE_ENV, "bfloat16")

    assert _device.auto_dtype("cpu") == ("bfloat16", 'LANCEDB_BAAI_DTYPE=bfloat16 overrides "auto"')
    assert _device.resolve_dtype("auto", "cpu") == "bfloat16"
    assert _device.resolve_dtype("float32", "cpu") == "float32"  # an explicit dtype stays
    fn = lancedb_baai.BAAIEmbeddings(name="BAAI/bge-small-en-v1.5", device="cpu")
    assert fn.engine_key().dtype == "bfloat16"
    monkeypatch.setenv(_device.DTYPE_ENV, "auto")
    assert _device.auto_dtype("cpu") == host  # "auto" in the variable is no override
    monkeypatch.setenv(_device.DTYPE_ENV, "fp8")
    with pytest.raises(ValueError, match=r"LANCEDB_BAAI_DTYPE='fp8' is not supported; use one of"):
        _device.resolve_dtype("auto", "cpu")


def test_cache_info_and_cli_info_give_the_reason(monkeypatch, st_model):
    monkeypatch.delenv(_device.DTYPE_ENV, raising=False)
    auto, why = _device.auto_dtype("cpu")
    lancedb_baai.BAAIEmbeddings(name=str(st_model), device="cpu").generate_embeddings(["a"])
    other = "bfloat16" if auto == "float32" else "float32"
    lancedb_baai.BAAIEmbeddings(name=str(st_model), device="cpu", dtype=other).generate_embeddings(["a"])

    reasons = {r["dtype"]: r["dtype_reason"] for r in lancedb_baai.cache_info()}
    assert reasons == {auto: why, other: f'asked for ("auto" would give {auto}: {why})'}
    stored = lancedb_baai.BAAIEmbeddings(name=str(st_model), device="cpu").provenance()  # table metadata
    assert (stored["dtype"], stored["dtype_reason"]) == (auto, why)
    result = CliRunner().invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    if report["device"] == "cpu":
        assert (report["dtype"], report["dtype_reason"]) == (auto, why)
