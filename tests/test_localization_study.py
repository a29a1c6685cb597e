"""The localization-vs-editing study: one record per request and layer, effects read off the traces of the true
facts, edit metrics equal to the evaluation's at that layer, and R^2 against closed forms."""

import json

import numpy as np
import pytest

from src.pipelines.localization_study import r_squared


def test_r_squared_matches_closed_forms():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(3), 4)
    outcome = rng.normal(size=12) + groups
    indicators = np.eye(3)[groups]
    means = np.array([outcome[groups == g].mean() for g in range(3)])
    by_hand = 1 - ((outcome - means[groups]) ** 2).sum() / ((outcome - outcome.mean()) ** 2).sum()
    assert r_squared(indicators, outcome) == pytest.approx(by_hand)
    x = rng.normal(size=12)
    line = np.column_stack([np.ones(12), x])
    assert r_squared(line, outcome) == pytest.approx(np.corrcoef(x, outcome)[0, 1] ** 2)
    assert r_squared(np.column_stack([indicators, x]), outcome) >= r_squared(indicators, outcome)


def test_study_edits_every_layer_and_reads_effects_off_the_traces(tiny_trained, tiny_kg, tmp_path, capsys):
    import run_localization_study
    from src.cli.common import run_cli
    from src.edit.causal_tracing import CausalTracer
    from src.lm.model import load_model
    from src.pipelines.evaluate_methods import EvalConfig, check_inputs

    out = tmp_path / "study"
    args = ["--model-dir", str(tiny_trained[0]), "--kg-file", str(tiny_kg.graph_path), "--device", "cpu",
            "--num-facts", "3", "--output-dir", str(out)]
    assert run_cli(run_localization_study.main, args) == 0
    printed = capsys.readouterr().out
    assert "explained by the edited layer alone" in printed and "gaussian/exact/mlp" in printed
    summary = json.loads((out / "study_summary.json").read_text())
    records = [json.loads(line) for line in (out / "study_records.jsonl").read_text().splitlines()]
    num_layers = summary["num_layers"]
    assert len(records) == 3 * num_layers and {r["layer"] for r in records} == set(range(num_layers))
    assert (out / "localization_vs_editing.png").is_file()

    model, tokenizer = load_model(tiny_trained[0], device="cpu")
    graph = check_inputs(EvalConfig(str(tiny_trained[0]), str(tiny_kg.graph_path), output_dir=str(out)),
                         run_localization_study.Path(run_localization_study.__file__).parent).graph
    tracer = CausalTracer(model, tokenizer, device="cpu", subjects=graph.entities)
    first = records[0]
    trace = tracer.trace_important_states(first["s"], first["r"], first["o"], kind="mlp", seed=first["index"])
    assert first["effects"]["gaussian/exact/mlp"] == pytest.approx(float(trace.indirect_effect[-1, first["layer"]]),
                                                                   abs=1e-6)
    table = summary["explained_beyond_layer"]["efficacy_margin"]
    assert set(table) == {f"{c}/{m}/{k}" for c in ("gaussian", "replace") for m in ("exact", "attribution")
                          for k in ("hidden", "mlp", "attn")}
    outcome = np.array([r["metrics"]["efficacy_margin"] for r in records])
    layers = np.eye(num_layers)[[r["layer"] for r in records]]
    assert table["replace/exact/mlp"]["r2_layer"] == pytest.approx(r_squared(layers, outcome))
    # the edit metrics are the evaluation's: ROME at one layer through the evaluation's own runner
    from dataclasses import replace

    from src.edit.evaluation.metrics import KGEvaluator
    from src.edit.evaluation.requests import draw_requests
    from src.edit.methods.base import EditEnvironment
    from src.edit.prompts.kg_context import KGContext
    from src.pipelines.evaluate_methods import run_method

    evaluation = EvalConfig(str(tiny_trained[0]), str(tiny_kg.graph_path), num_edits=3, output_dir=str(out))
    inputs = check_inputs(evaluation, run_localization_study.Path(run_localization_study.__file__).parent)
    evaluator = KGEvaluator(model, tokenizer, graph.facts, KGContext.from_corpus(inputs.corpus).aliases,
                            split=evaluation.split)
    env = EditEnvironment(corpus_path=inputs.corpus, device=tracer.device, split=evaluation.split)
    layer = num_layers - 1
    run = run_method("rome", model, tokenizer, draw_requests(graph, 3, 0), "independent", evaluator, env,
                     replace(inputs.hparams["rome"], layer=layer, layer_retries=0), progress=False)
    for record in run.records:
        ours = next(r for r in records if r["index"] == record.index and r["layer"] == layer)
        assert ours["metrics"]["efficacy"] == record.efficacy
        assert ours["metrics"]["efficacy_margin"] == pytest.approx(record.efficacy_margin, abs=1e-6)
        assert ours["metrics"]["update_norm"] == pytest.approx(record.update_norm, rel=1e-5)
    norms = summary["explained_beyond_layer"]["update_norm"]["gaussian/exact/hidden"]
    assert norms["r2_layer"] == pytest.approx(r_squared(layers, np.array([r["metrics"]["update_norm"]
                                                                          for r in records])))


def test_study_bad_input_is_one_line(tiny_trained, tiny_kg, tmp_path, capsys):
    import run_localization_study
    from src.cli.common import run_cli

    args = ["--model-dir", str(tiny_trained[0]), "--kg-file", str(tiny_kg.graph_path), "--device", "cpu",
            "--num-facts", "1", "--output-dir", str(tmp_path / "study")]
    assert run_cli(run_localization_study.main, args) == 2
    assert "--num-facts must be >= 2" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()
