"""The top-level scripts, run in-process on the tiny trained model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import run_editing_single
import run_locating_batch
import visualize_locating
from src.cli.common import run_cli
from src.pipelines.locate_sample import load_results
from src.lm.model import load_model
from src.utils.io import sha256_file
from tests.conftest import REPO_ROOT

FAST_ROME = "num_context_prefixes: 5\nnum_eval_random_facts: 10\n"


def locate(args):
    return run_cli(run_locating_batch.main, args)


def edit(args):
    return run_cli(run_editing_single.main, args)


@pytest.fixture()
def locating_args(tiny_trained, tiny_kg, tmp_path):
    return ["--model-dir", str(tiny_trained[0]), "--kg-file", str(tiny_kg.graph_path), "--device", "cpu"]


def test_locating_writes_every_output(locating_args, tmp_path, capsys):
    out = tmp_path / "loc"
    assert locate(locating_args + ["--num-samples", "4", "--output-dir", str(out), "--num-noise-samples", "3"]) == 0
    summary = json.loads((out / "locating_summary.json").read_text())
    assert summary["num_traced"] + summary["num_skipped"] == 4
    assert summary["parameters"]["num_noise_samples"] == 3 and summary["parameters"]["seed"] == 42
    assert set(summary["average_effects"]) == {"hidden", "mlp", "attn"}
    sample = summary["samples"][0]
    assert {"s", "r", "o", "clean_prob", "corrupted_prob", "best_layer", "peak"} <= set(sample)
    names = sorted(p.name for p in out.iterdir())
    assert {"average_indirect_effect.png", "best_layers.png", "locating_summary.json", "traces.npz"} <= set(names)
    index = sample["index"]
    assert f"trace_{index:03d}_{sample['s']}_{sample['r']}_{sample['o']}.png" in names
    assert "mean best layer" in capsys.readouterr().out
    # re-plot from the directory: the traces come back unchanged
    _, samples, _ = load_results(out)
    assert np.array_equal(samples[0].traces["mlp"].scores, np.load(out / "traces.npz")[f"{index:03d}/mlp"])
    assert run_cli(visualize_locating.main, ["--results-dir", str(out), "--plot-dir", str(tmp_path / "replot")]) == 0
    assert (tmp_path / "replot" / "average_indirect_effect.png").is_file()


def test_locating_in_bfloat16_on_the_cpu(locating_args, tmp_path):
    """bfloat16 runs on the CPU end to end; its scores follow float32's within bfloat16's precision."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        assert locate(locating_args + ["--num-samples", "3", "--output-dir", str(out), "--no-plots",
                                       "--dtype", dtype]) == 0
        runs[dtype] = json.loads((out / "locating_summary.json").read_text())
    assert runs["bfloat16"]["parameters"]["dtype"] == "bfloat16"
    clean = [[s["clean_prob"] for s in runs[d]["samples"]] for d in ("float32", "bfloat16")]
    assert np.allclose(clean[0], clean[1], atol=0.05)


def test_locating_is_deterministic(locating_args, tmp_path):
    for name in ("a", "b"):
        assert locate(locating_args + ["--num-samples", "3", "--output-dir", str(tmp_path / name), "--no-plots"]) == 0
    a, b = (json.loads((tmp_path / n / "locating_summary.json").read_text()) for n in ("a", "b"))
    assert a["samples"] == b["samples"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-samples", "0"], "--num-samples must be >= 1"),
        (["--noise-level", "0"], "--noise-level must be > 0"),
        (["--window", "0"], "--window must be >= 1"),
        (["--kinds", "hidden,resid"], "unknown kind 'resid'"),
        (["--dtype", "float16"], "dtype float16 needs a CUDA device (got cpu)"),
    ],
)
def test_locating_bad_flags_exit_2_without_output(locating_args, tmp_path, capsys, extra, message):
    out = tmp_path / "loc"
    assert locate(locating_args + ["--output-dir", str(out)] + extra) == 2
    assert message in capsys.readouterr().err
    assert not (out / "locating_summary.json").exists()


def test_locating_missing_model_and_bad_kg(tiny_kg, tmp_path, capsys):
    out = tmp_path / "loc"
    assert locate(["--model-dir", str(tmp_path / "none"), "--kg-file", str(tiny_kg.graph_path), "--output-dir", str(out)]) == 2
    assert "python -m src.cli.train_lm --config configs/train_gpt_small.yaml" in capsys.readouterr().err
    bad = tmp_path / "graph.jsonl"
    bad.write_text('{"s": "E_000", "r": "R_01", "o": "E_001"}\nnot json\n')
    assert locate(["--kg-file", str(bad), "--output-dir", str(out)]) == 2
    assert "graph.jsonl:2: malformed JSON" in capsys.readouterr().err
    assert not out.exists()


def test_locating_unknown_entity_exits_2(tiny_trained, tmp_path, capsys):
    graph = tmp_path / "graph.jsonl"
    graph.write_text('{"s": "E_777", "r": "R_01", "o": "E_001"}\n')
    assert locate(["--model-dir", str(tiny_trained[0]), "--kg-file", str(graph), "--output-dir", str(tmp_path / "o")]) == 2
    assert "unknown entity 'E_777'" in capsys.readouterr().err


@pytest.fixture()
def edit_args(tiny_trained, tiny_kg, tmp_path):
    hparams = tmp_path / "rome.yaml"
    hparams.write_text(FAST_ROME)
    return ["--model-dir", str(tiny_trained[0]), "--kg-corpus", str(tiny_kg.corpus_path), "--device", "cpu",
            "--hparams", str(hparams)]


def test_editing_writes_outputs_and_never_touches_the_model_dir(edit_args, tiny_trained, tiny_kg, tmp_path, capsys):
    model_dir = tiny_trained[0]
    before = {p.name: sha256_file(p) for p in model_dir.iterdir()}
    fact = tiny_kg.graph.facts[0]
    out, saved = tmp_path / "edit", tmp_path / "edited_model"
    args = edit_args + ["-s", fact.s, "-r", fact.r, "-o", "E_005", "--output-dir", str(out), "--save-model", str(saved)]
    assert edit(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["edit_result.json", "editing_result.png", "locating_result.png"]
    data = json.loads((out / "edit_result.json").read_text())
    assert data["result"]["success"] is True and data["result"]["original_prediction"] == fact.o
    assert data["prediction_after"]["top"][0]["token"] == "E_005"
    assert "success             True" in capsys.readouterr().out
    model, tokenizer = load_model(saved, "cpu")
    from src.lm.fact_accuracy import predict_objects

    assert predict_objects(model, tokenizer, [fact])[0] == "E_005"
    assert {p.name: sha256_file(p) for p in model_dir.iterdir()} == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-s", "E_999", "-r", "R_01", "-o", "E_001"], "unknown subject 'E_999'"),
        (["-s", "E_000", "-r", "R_99", "-o", "E_001"], "unknown relation 'R_99'"),
        (["-s", "E_000", "-r", "R_01", "-o", "E_002", "--layer", "4"], "layer 4 is out of range"),
        (["-s", "E_000", "-r", "R_01", "-o", "E_002", "--kg-corpus", "/nonexistent/c.txt"], "Corpus file not found"),
        (["-s", "E_000", "-r", "R_01", "-o", "E_002", "--dtype", "float16"], "dtype float16 needs a CUDA device"),
    ],
)
def test_editing_bad_input_exits_2_without_output(edit_args, tmp_path, capsys, extra, message):
    out = tmp_path / "edit"
    assert edit(edit_args + ["--output-dir", str(out)] + extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_missing_model_or_corpus_says_how_to_build_it(edit_args, tmp_path, capsys):
    """The library names what is missing; the command line adds the command that builds it."""
    args = ["-s", "E_000", "-r", "R_01", "-o", "E_002", "--output-dir", str(tmp_path / "e"), "--device", "cpu"]
    assert edit(["--model-dir", str(tmp_path / "none")] + args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: Model not found: {tmp_path / 'none'} has no config.json "
                   "(train one with: python -m src.cli.train_lm --config configs/train_gpt_small.yaml)")
    assert edit(edit_args + args + ["--kg-corpus", str(tmp_path / "c.txt")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: Corpus file not found: {tmp_path / 'c.txt'} "
                                               "(build one with: python -m src.cli.make_kg --config configs/kg_ba.yaml)")


def test_editing_refuses_to_overwrite_the_input_model(edit_args, tiny_trained, tmp_path, capsys):
    args = edit_args + ["-s", "E_000", "-r", "R_01", "-o", "E_002", "--save-model", str(tiny_trained[0]),
                        "--output-dir", str(tmp_path / "e")]
    assert edit(args) == 2
    assert "is the input model directory" in capsys.readouterr().err


def test_editing_to_the_current_answer_does_nothing(edit_args, tiny_kg, tmp_path, capsys):
    fact = tiny_kg.graph.facts[0]
    out = tmp_path / "edit"
    assert edit(edit_args + ["-s", fact.s, "-r", fact.r, "-o", fact.o, "--output-dir", str(out)]) == 0
    assert "already predicts" in capsys.readouterr().out
    assert not out.exists()


@pytest.mark.parametrize("script", ["run_locating.sh", "run_editing.sh"])
def test_shell_wrappers_run_from_any_directory(script, tmp_path):
    completed = subprocess.run([str(REPO_ROOT / script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                               env={**os.environ, "PYTHON": sys.executable})  # the interpreter running the tests
    assert completed.returncode == 0 and "--model-dir" in completed.stdout
