"""Two evaluation runs compared: paired differences and per-layer means checked against sums written by hand."""

import json

import numpy as np
import pytest

import compare_editing_evals
from src.cli.common import run_cli
from src.edit.evaluation.metrics import EditRecord
from src.edit.evaluation.requests import EditRequest
from src.pipelines.compare_evaluations import PROTOCOL, compare_evaluations
from src.utils.errors import InputError

REQUESTS = [EditRequest(f"E_{i}", "R_1", f"E_{i + 10}", f"E_{i + 20}") for i in range(6)]
PROTOCOL_VALUES = {"kg_sha256": "ab", "corpus_sha256": "cd", "seed": 0, "mode": "independent",
                   "allowed_fraction": 0.5, "num_prefixes": 5, "num_neighbors": 20, "num_random": 20, "every": 50}


def record(index, method, paraphrase, subject, layer, request=None):
    fields = {f: None for f in EditRecord.__dataclass_fields__ if f not in ("kind", "used_context", "used_kl")}
    fields.update(index=index, method=method, mode="independent", request=request or REQUESTS[index],
                  efficacy=paraphrase > 0.5, efficacy_margin=paraphrase - 0.5, paraphrase=paraphrase,
                  specificity_subject=subject, num_scored_seen=0, update_norm=1.0, seconds=0.1, layers=(layer,),
                  steps=1)
    return EditRecord(**fields)


def write_run(directory, records, **protocol):
    directory.mkdir()
    identity = {**PROTOCOL_VALUES, **protocol, "model_dir": str(directory)}  # the model may differ
    (directory / "eval_run.json").write_text(json.dumps(identity))
    (directory / "eval_records.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    return directory


PARAPHRASE_A = [1.0, 0.8, 0.4, 1.0, 0.2, 0.4]
PARAPHRASE_B = [0.8, 0.8, 1.0, 0.6, 0.2, 0.0]
SUBJECT_A = [1.0, 0.5, 0.75, 1.0, 1.0, 0.25]
LAYERS_A = [0, 1, 1, 0, 1, 1]


@pytest.fixture()
def two_runs(tmp_path):
    first = write_run(tmp_path / "run_a", [record(i, "rome", PARAPHRASE_A[i], SUBJECT_A[i], LAYERS_A[i])
                                           for i in range(6)]
                      + [record(i, "ft", 0.0, 0.0, 0) for i in range(2)])
    # the second run edited the first five requests only, and ran no ft
    second = write_run(tmp_path / "run_b", [record(i, "rome", PARAPHRASE_B[i], 1.0, 1) for i in range(5)])
    return first, second


def test_paired_differences_are_over_the_requests_both_edited(two_runs):
    comparison = compare_evaluations(*two_runs, labels=("A", "B"))
    assert comparison.methods == ("rome",)
    difference = comparison.differences["rome"]["paraphrase"]
    by_hand = sum(a - b for a, b in zip(PARAPHRASE_A[:5], PARAPHRASE_B[:5])) / 5
    assert difference["n"] == 5 and difference["mean"] == pytest.approx(by_hand)
    assert difference["low"] <= by_hand <= difference["high"]
    efficacy = comparison.differences["rome"]["efficacy"]  # paraphrase > 0.5: 1,1,0,1,0 against 1,1,1,1,0
    assert efficacy["mean"] == pytest.approx(-1 / 5)
    # each run's own estimates keep all its edits
    assert comparison.estimates["rome"]["A"]["paraphrase"]["n"] == 6
    assert comparison.estimates["rome"]["A"]["paraphrase"]["mean"] == pytest.approx(np.mean(PARAPHRASE_A))
    assert comparison.estimates["rome"]["B"]["paraphrase"]["n"] == 5


def test_figures_by_edited_layer_are_the_means_of_those_edits(two_runs):
    by_layer = compare_evaluations(*two_runs, labels=("A", "B")).by_layer["rome"]
    assert list(by_layer["A"]) == ["0", "1"] and list(by_layer["B"]) == ["1"]
    at_one = [s for s, layer in zip(SUBJECT_A, LAYERS_A) if layer == 1]
    assert by_layer["A"]["1"]["specificity_subject"]["mean"] == pytest.approx(sum(at_one) / len(at_one))
    assert by_layer["A"]["0"]["specificity_subject"]["n"] == 2


def test_labels_default_to_the_directory_names(two_runs):
    assert compare_evaluations(*two_runs).labels == ("run_a", "run_b")


@pytest.mark.parametrize("key", PROTOCOL)
def test_runs_under_another_protocol_are_refused(tmp_path, key):
    first = write_run(tmp_path / "a", [record(0, "rome", 1.0, 1.0, 0)])
    second = write_run(tmp_path / "b", [record(0, "rome", 1.0, 1.0, 0)], **{key: "other"})
    with pytest.raises(InputError, match=f"differ in {key}"):
        compare_evaluations(first, second)


def test_other_requests_under_one_index_and_no_shared_method_are_refused(tmp_path):
    first = write_run(tmp_path / "a", [record(0, "rome", 1.0, 1.0, 0)])
    other = write_run(tmp_path / "b", [record(0, "rome", 1.0, 1.0, 0, request=REQUESTS[3])])
    with pytest.raises(InputError, match="edit different requests"):
        compare_evaluations(first, other)
    ft_only = write_run(tmp_path / "c", [record(0, "ft", 1.0, 1.0, 0)])
    with pytest.raises(InputError, match="share no method; they ran rome and ft"):
        compare_evaluations(first, ft_only)


def test_the_script_prints_tables_and_writes_the_json(two_runs, tmp_path, capsys):
    out, plot = tmp_path / "comparison.json", tmp_path / "figures" / "differences.png"
    args = [str(two_runs[0]), str(two_runs[1]), "--labels", "A,B", "--output", str(out), "--plot", str(plot)]
    assert run_cli(compare_editing_evals.main, args) == 0
    printed = capsys.readouterr().out
    assert "| rome (A) |" in printed and "| A - B |" in printed and "| rome (A): 1, 4 |" in printed
    assert json.loads(out.read_text())["differences"]["rome"]["paraphrase"]["n"] == 5
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("extra, message", [(["--labels", "A"], "--labels expects FIRST,SECOND"),
                                            (["--labels", "A,A"], "two different, non-empty labels"),
                                            (["--plot", "run_a/eval_run.json/x.png"], "is a file, not a directory")])
def test_bad_input_is_one_line_and_exit_2(two_runs, tmp_path, capsys, extra, message):
    extra = [str(tmp_path / x) if x.endswith(".png") else x for x in extra]
    assert run_cli(compare_editing_evals.main, [str(two_runs[0]), str(two_runs[1]), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_directory_that_is_no_run_is_named(two_runs, tmp_path, capsys):
    assert run_cli(compare_editing_evals.main, [str(two_runs[0]), str(tmp_path)]) == 2
    assert f"{tmp_path} is not an evaluation run directory" in capsys.readouterr().err
