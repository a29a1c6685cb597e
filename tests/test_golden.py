"""Golden outputs: what the scripts write today must come back bit for bit after any change that means to keep
behaviour (a refactor, a speed path).

Pinned on the tiny model: the guide's edit (`run_editing_single`: edit_result.json without timings), a seeded
locating run (traces.npz and locating_summary.json), and a seeded 30-edit evaluation of rome, memit and ft (the
records without timings); on the default model, when `outputs/models/gpt_small` holds the model the file was
written with (its sha256): the guide's edit E_000 R_04 -> E_999.

Float rounding depends on the CPU, the thread count and torch, so each file in tests/golden/ holds one record per
machine that wrote it (its `machine` entry, with the inputs it depends on) and a test is skipped, saying so, on a
machine it has no record for. `KG_ROME_WRITE_GOLDEN=1 python -m pytest tests/test_golden.py` writes this machine's
records (the others are kept): for a new machine, or, from a checkout whose results are the reference, after a
change that means to change results (whose other machines' records then need rewriting on those machines).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import run_editing_eval
import run_editing_single
import run_locating_batch
from src.cli.common import run_cli
from tests.conftest import REPO_ROOT

GOLDEN_DIR = Path(__file__).parent / "golden"
TIMING_KEYS = {"seconds", "elapsed_seconds", "tracing_seconds", "wall_seconds"}
DEFAULT_MODEL = REPO_ROOT / "outputs" / "models" / "gpt_small"
DEFAULT_CORPUS = REPO_ROOT / "data" / "kg" / "ba" / "corpus.train.txt"


def machine() -> dict:
    """What float rounding depends on: the CPU model and its vector instructions (which kernels run), torch's version
    and its thread count."""
    cpu, isa = platform.processor() or platform.machine(), []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
        cpu = names[0] if names else cpu
        isa = sorted(flag for flag in flags if flag in ("avx2", "avx512f", "amx_tile", "fma"))
    return {"cpu": cpu, "isa": isa, "torch": torch.__version__, "threads": torch.get_num_threads()}


def without_timings(value):
    """`value` without timing entries, and absolute paths (which differ from run to run) cut to their last part."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return Path(value).name
    return value


def writing() -> bool:
    return os.environ.get("KG_ROME_WRITE_GOLDEN") == "1"


def golden_records(name: str) -> list[dict]:
    """The records of tests/golden/<name>.json, each {"machine": ..., "observed": ...} (a file of one record may be
    that record alone)."""
    data = json.loads((GOLDEN_DIR / f"{name}.json").read_text())
    return data["records"] if "records" in data else [data]


def record_here(name: str, inputs: dict | None = None) -> dict | None:
    """The record written on this machine for these inputs (a model's digest), or None."""
    here = machine() | (inputs or {})
    return next((r for r in golden_records(name) if r["machine"] == here), None)


def skip_if_written_elsewhere(name: str, inputs: dict | None = None) -> None:
    """Skip, before any work, when tests/golden/<name>.json has no record of this machine with these inputs; never
    while writing."""
    path = GOLDEN_DIR / f"{name}.json"
    if writing() or not path.is_file() or record_here(name, inputs) is not None:
        return
    written = [r["machine"] for r in golden_records(name)]
    pytest.skip(f"{path.name} was written on {written}, this is {machine() | (inputs or {})}: float rounding or "
                "the model differs")


def check_golden(name: str, observed: dict, inputs: dict | None = None) -> None:
    """Compare `observed` with this machine's record in tests/golden/<name>.json (exact), or write that record
    under KG_ROME_WRITE_GOLDEN=1 (the other machines' records kept)."""
    path = GOLDEN_DIR / f"{name}.json"
    observed = json.loads(json.dumps(observed))  # the JSON form: tuples as lists, floats as they round-trip
    if writing():
        here = machine() | (inputs or {})
        kept = [r for r in golden_records(name) if r["machine"] != here] if path.is_file() else []
        GOLDEN_DIR.mkdir(exist_ok=True)
        records = kept + [{"machine": here, "observed": observed}]
        path.write_text(json.dumps({"records": records}, indent=1, sort_keys=True) + "\n")
        return
    if not path.is_file():
        pytest.fail(f"no golden file {path.name}: write it with KG_ROME_WRITE_GOLDEN=1")
    skip_if_written_elsewhere(name, inputs)  # the tests skip before their work; this keeps a direct call honest
    assert observed == record_here(name, inputs)["observed"]


def array_digests(path: Path) -> dict:
    with np.load(path) as arrays:
        return {key: {"shape": list(arrays[key].shape), "dtype": str(arrays[key].dtype),
                      "sha256": hashlib.sha256(np.ascontiguousarray(arrays[key]).tobytes()).hexdigest()}
                for key in sorted(arrays.files)}


def test_the_guide_edit_on_the_tiny_model(tiny_trained, tiny_kg, tmp_path):
    skip_if_written_elsewhere("tiny_edit")
    out = tmp_path / "edit"
    args = ["--model-dir", str(tiny_trained[0]), "--kg-corpus", str(tiny_kg.corpus_path), "--device", "cpu",
            "-s", "E_000", "-r", "R_01", "-o", "E_005", "--output-dir", str(out)]
    assert run_cli(run_editing_single.main, args) == 0
    check_golden("tiny_edit", without_timings(json.loads((out / "edit_result.json").read_text())))


def test_a_seeded_locating_run_on_the_tiny_model(tiny_trained, tiny_kg, tmp_path):
    skip_if_written_elsewhere("tiny_locating")
    out = tmp_path / "locate"
    args = ["--model-dir", str(tiny_trained[0]), "--kg-file", str(tiny_kg.graph_path), "--device", "cpu",
            "--num-samples", "8", "--num-noise-samples", "4", "--seed", "3", "--no-plots", "--output-dir", str(out)]
    assert run_cli(run_locating_batch.main, args) == 0
    summary = without_timings(json.loads((out / "locating_summary.json").read_text()))
    check_golden("tiny_locating", {"summary": summary, "traces": array_digests(out / "traces.npz")})


def test_a_seeded_evaluation_of_rome_memit_and_ft_on_the_tiny_model(tiny_trained, tiny_kg, tmp_path):
    skip_if_written_elsewhere("tiny_evaluation")
    out = tmp_path / "eval"
    args = ["--model-dir", str(tiny_trained[0]), "--kg-file", str(tiny_kg.graph_path), "--device", "cpu",
            "--methods", "rome,memit,ft", "--num-edits", "30", "--seed", "0", "--no-progress", "--output-dir", str(out)]
    assert run_cli(run_editing_eval.main, args) == 0
    records = [without_timings(json.loads(line)) for line in (out / "eval_records.jsonl").read_text().splitlines()]
    summary = without_timings(json.loads((out / "eval_summary.json").read_text()))
    check_golden("tiny_evaluation", {"records": records, "summary": summary})


@pytest.mark.skipif(not (DEFAULT_MODEL / "config.json").is_file() or not DEFAULT_CORPUS.is_file(),
                    reason="the default model is not trained here (make demo trains it)")
def test_the_guide_edit_on_the_default_model(tmp_path):
    weights = {"model_sha256": hashlib.sha256((DEFAULT_MODEL / "model.safetensors").read_bytes()).hexdigest()}
    skip_if_written_elsewhere("default_edit", weights)
    out = tmp_path / "edit"
    args = ["--model-dir", str(DEFAULT_MODEL), "--kg-corpus", str(DEFAULT_CORPUS), "--device", "cpu",
            "-s", "E_000", "-r", "R_04", "-o", "E_999", "--output-dir", str(out)]
    assert run_cli(run_editing_single.main, args) == 0
    check_golden("default_edit", without_timings(json.loads((out / "edit_result.json").read_text())), weights)


def test_each_machine_is_compared_with_its_own_record(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "GOLDEN_DIR", tmp_path)
    monkeypatch.delenv("KG_ROME_WRITE_GOLDEN", raising=False)
    other = {**machine(), "cpu": "another CPU"}
    (tmp_path / "two.json").write_text(json.dumps({"records": [{"machine": other, "observed": {"x": 1}},
                                                               {"machine": machine(), "observed": {"x": 2}}]}))
    check_golden("two", {"x": 2})
    with pytest.raises(AssertionError):
        check_golden("two", {"x": 1})
    (tmp_path / "alone.json").write_text(json.dumps({"machine": other, "observed": {"x": 1}}))  # one record, bare
    with pytest.raises(pytest.skip.Exception, match="another CPU"):
        check_golden("alone", {"x": 1})
    monkeypatch.setenv("KG_ROME_WRITE_GOLDEN", "1")  # writing adds this machine's record and keeps the other's
    check_golden("alone", {"x": 3})
    assert [r["observed"] for r in golden_records("alone")] == [{"x": 1}, {"x": 3}]
