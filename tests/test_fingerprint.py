"""What identifies a model's weights: equal for copies, different after any change that matters."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from lancedb_baai import BAAIEmbeddings, testing
from lancedb_baai.models.fingerprint import _weight_ranges, differences, hub_revision, pooling, weights, weights_digest

MIB = 1 << 20


def test_a_copy_has_the_same_digest_and_a_reexport_changes_it(st_model, tmp_path):
    copy = shutil.copytree(st_model, tmp_path / "copy")
    assert weights_digest(copy) == weights_digest(st_model)
    testing.build_st_embedder(copy, seed=9)  # fine-tuned and saved again at the same place
    assert weights_digest(copy) != weights_digest(st_model)


def test_changes_deep_inside_a_large_weight_file_are_seen(tmp_path):
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    blob = bytearray(os.urandom(16 * MIB))
    weight = directory / "model.bin"

    def digest_with(data: bytes) -> str:
        weight.write_bytes(data)
        return weights_digest(directory)

    original = digest_with(bytes(blob))
    middle = blob.copy()
    offset = _weight_ranges(len(blob), 0)[2 + 8][0] + 10  # a middle sample, far from the first and last MiB
    middle[offset] ^= 0xFF
    assert digest_with(bytes(middle)) != original
    longer = bytes(blob) + b"\0"
    assert digest_with(longer) != original
    assert digest_with(bytes(blob)) == original


def test_readme_and_other_runtimes_files_do_not_count(st_model, tmp_path):
    copy = shutil.copytree(st_model, tmp_path / "copy")
    (copy / "README.md").write_text("fine-tuned on our docs")
    (copy / "onnx").mkdir()
    (copy / "onnx" / "model.onnx").write_bytes(b"\0" * 10)
    (copy / ".cache").mkdir()
    assert weights_digest(copy) == weights_digest(st_model)


def test_pooling_is_read_from_the_layout(st_model, plain_model, tmp_path):
    assert pooling(st_model) == "cls,normalize"
    assert pooling(plain_model) == "cls"
    copy = shutil.copytree(st_model, tmp_path / "copy")
    config = json.loads((copy / "1_Pooling" / "config.json").read_text())
    config.update(pooling_mode_cls_token=False, pooling_mode_mean_tokens=True)
    (copy / "1_Pooling" / "config.json").write_text(json.dumps(config))
    assert pooling(copy) == "mean,normalize"
    assert weights(copy)["weights"] != weights(st_model)["weights"]


def test_a_hub_snapshot_records_its_commit(st_model, tmp_path):
    commit = "a" * 40
    snapshot = shutil.copytree(st_model, tmp_path / "models--BAAI--bge-small-en-v1.5" / "snapshots" / commit)
    assert hub_revision(snapshot) == commit and hub_revision(st_model) is None
    assert weights(snapshot)["revision"] == commit
    assert weights(snapshot)["weights"] == weights(st_model)["weights"]


def test_function_fingerprint_names_what_makes_the_vectors(st_model):
    fingerprint = BAAIEmbeddings(name=str(st_model), dtype="float32").fingerprint()
    assert fingerprint["weights"] == weights_digest(st_model)
    assert (fingerprint["output"], fingerprint["dims"], fingerprint["pooling"]) == ("dense", 32, "cls,normalize")
    assert fingerprint["normalize"] is True and fingerprint["dtype"] == "float32"
    assert fingerprint["query_instruction"].startswith("Represent this sentence")  # bge-small-en family
    raw = BAAIEmbeddings(name=str(st_model), dtype="float32", normalize=False).fingerprint()
    assert differences(fingerprint, raw) == ["normalize"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fingerprint_is_the_same_in_another_process(st_model):
    here = BAAIEmbeddings(name=str(st_model), dtype="float32").fingerprint()
    code = ("import json, sys; from lancedb_baai import BAAIEmbeddings; "
            "print(json.dumps(BAAIEmbeddings(name=sys.argv[1], dtype='float32').fingerprint()))")
    out = subprocess.run([sys.executable, "-c", code, str(st_model)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == here


def test_the_loaded_engine_has_the_files_fingerprint(st_model):
    function = BAAIEmbeddings(name=str(st_model), dtype="float32")
    from_files = function.fingerprint()
    function.generate_embeddings(["load it"])
    assert function.fingerprint() == from_files


@pytest.mark.parametrize("field, other", [("dims", 64), ("weights", "0" * 16), ("pooling", "mean"),
                                          ("output", "colbert")])
def test_differences_name_the_compared_fields(field, other):
    base = {"weights": "1" * 16, "pooling": "cls", "output": "dense", "dims": 32, "normalize": True,
            "query_instruction": "", "dtype": "float32", "version": "0.1", "revision": "a" * 40}
    assert differences(base, {**base, field: other}) == [field]
    assert differences(base, {**base, "dtype": "bfloat16", "version": "9", "revision": "b" * 40}) == []
