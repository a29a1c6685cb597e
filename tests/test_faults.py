"""Faults cost no work: damaged cache entries heal, interrupted evaluations resume to the uninterrupted result,
signals stop cleanly, unwritable outputs are refused before any work."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

import run_editing_eval
from src.cli import cache as cache_cli
from src.cli.common import run_cli
from src.edit.rank_one.key_statistics import load_or_compute_second_moment, statistics_cache
from src.utils import jsonl
from src.utils.cache import CacheWarning, TensorCache, parse_size
from src.utils.errors import InputError
from src.utils.interrupts import Interrupted
from tests.conftest import REPO_ROOT
from tests.test_edit_eval import eval_args


# ------------------------------------------------------------------ caches


def only_entry(root):
    entries = list(root.glob("*.pt"))
    assert len(entries) == 1
    return entries[0]


def damage_by_truncation(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damage_by_a_flipped_byte(path):
    data = bytearray(path.read_bytes())
    tensors = torch.load(path, weights_only=True)["tensors"]
    raw = tensors["mom2"].reshape(-1).view(torch.uint8).numpy().tobytes()
    at = bytes(data).find(raw[:64])  # the stored tensor's bytes inside the zip (stored uncompressed)
    assert at > 0
    data[at + 3] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_by_another_key(path):
    payload = torch.load(path, weights_only=True)
    payload["key"] = "0" * 32
    torch.save(payload, path)


def damage_by_another_dtype(path):
    payload = torch.load(path, weights_only=True)
    payload["tensors"]["mom2"] = payload["tensors"]["mom2"].float()
    torch.save(payload, path)


def damage_by_the_old_format(path):
    torch.save({"mom2": torch.eye(3, dtype=torch.float64)}, path)


@pytest.mark.parametrize("damage", [damage_by_truncation, damage_by_a_flipped_byte, damage_by_another_key,
                                    damage_by_another_dtype, damage_by_the_old_format])
def test_a_damaged_statistics_entry_warns_once_and_is_recomputed(tiny_model, tiny_kg, tmp_path, damage):
    model, tokenizer = tiny_model
    compute = lambda: load_or_compute_second_moment(model, tokenizer, tiny_kg.corpus_path, 1, 0, tmp_path,  # noqa: E731
                                                    progress=False)
    fresh, cached = compute()
    assert not cached
    entry = only_entry(tmp_path / "mom2")
    damage(entry)
    with pytest.warns(CacheWarning, match=r"cannot be used .*; it is recomputed") as caught:
        healed, cached = compute()
    assert len(caught) == 1 and not cached
    assert torch.equal(healed, fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the replaced entry is good: no warning
        again, cached = compute()
    assert cached and torch.equal(again, fresh) and only_entry(tmp_path / "mom2") == entry


def _store_many(root, seed, rounds):
    cache = TensorCache(root)
    generator = torch.Generator().manual_seed(seed)
    value = torch.randn(256, 256, generator=generator, dtype=torch.float64)
    for _ in range(rounds):
        cache.store("shared", {"mom2": value}, {"writer": seed})
        loaded = cache.load("shared", {"mom2": ((256, 256), torch.float64)})
        assert loaded is not None  # never a half-written file, whoever wrote last


def test_two_processes_storing_one_entry_at_once_leave_one_good_file(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_store_many, args=(tmp_path, seed, 30)) for seed in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["shared.pt"]  # no temporary files left
    entry = TensorCache(tmp_path).entries()[0]
    assert entry.damaged is None and entry.description["writer"] in (1, 2)


def test_entries_list_clear_and_evict_least_recently_used(tmp_path):
    cache = TensorCache(tmp_path)
    value = torch.zeros(64, 64, dtype=torch.float64)  # 32 KiB of payload
    for age, key in enumerate(["c", "b", "a"]):
        path = cache.store(key, {"mom2": value}, {"layer": age})
        os.utime(path, (time.time() - 86400 * (3 - age),) * 2)  # c: used 3 days ago, b: 2, a: 1
    assert [e.key for e in cache.entries()] == ["c", "b", "a"]
    assert cache.load("c") is not None  # a load is a use: c becomes the most recent
    assert [e.key for e in cache.entries()] == ["b", "a", "c"]
    size = cache.entries()[0].size_bytes
    limited = TensorCache(tmp_path, limit_bytes=3 * size)
    limited.store("d", {"mom2": value})  # four entries over a limit of three: b, the least recently used, goes
    assert sorted(e.key for e in limited.entries()) == ["a", "c", "d"]
    tiny = TensorCache(tmp_path / "tiny", limit_bytes=1)
    tiny.store("old", {"mom2": value})
    tiny.store("new", {"mom2": value})  # over any limit: the others go, never the entry just stored
    assert [e.key for e in tiny.entries()] == ["new"]
    removed = cache.clear(older_than_days=0.5)
    assert [e.key for e in removed] == ["a"] and sorted(e.key for e in cache.entries()) == ["c", "d"]
    assert len(cache.clear()) == 2 and cache.entries() == []


def test_sizes_parse_and_a_bad_size_is_one_line():
    assert parse_size("8G") == 8 << 30 and parse_size("500M") == 500 << 20 and parse_size("1.5k") == 1536
    assert parse_size("none") == 0 and parse_size("1024") == 1024 and parse_size("2GiB") == 2 << 30
    for bad in ("lots", "8iB", "-1G", "G"):
        with pytest.raises(InputError, match=f"cache size limit '{bad}' is not a size"):
            parse_size(bad)


def test_the_cache_command_lists_and_clears(tiny_model, tiny_kg, tmp_path, capsys, monkeypatch):
    model, tokenizer = tiny_model
    monkeypatch.setenv("KG_ROME_CACHE_LIMIT", "none")
    load_or_compute_second_moment(model, tokenizer, tiny_kg.corpus_path, 1, 0, tmp_path, progress=False)
    (tmp_path / "mom2" / "broken.pt").write_bytes(b"not a zip")
    assert run_cli(cache_cli.main, ["list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 entries" in out and "limit none" in out
    assert "layer 1 source corpus corpus corpus.train.txt" in out and "damaged:" in out
    assert run_cli(cache_cli.main, ["clear", "--cache-dir", str(tmp_path)]) == 0
    assert "removed 2 entries" in capsys.readouterr().out
    assert statistics_cache(tmp_path).entries() == []


# ------------------------------------------------------------------ runs that resume


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def run_contents(out):
    records = [json.loads(line) for line in (out / "eval_records.jsonl").read_text().splitlines()]
    summary = json.loads((out / "eval_summary.json").read_text())
    summary["parameters"].pop("output_dir")
    return without_timings(records), without_timings(summary)


class InterruptAfter:
    """jsonl.append that raises KeyboardInterrupt (Ctrl-C) right after its `limit`-th line is on disk."""

    def __init__(self, limit):
        self.limit, self.lines, self.append = limit, 0, jsonl.append

    def __call__(self, path, items):
        written = self.append(path, items)
        self.lines += written
        if self.lines >= self.limit:
            raise KeyboardInterrupt
        return written


MEMIT = "layers: [1, 2]\nnum_context_prefixes: 3\nmom2_source: corpus\nmom2_update_weight: 100\n"


@pytest.mark.parametrize("mode, methods, num_edits, stop_after", [
    ("independent", "rome", 4, 2),
    ("sequential", "memit", 5, 4),  # checkpoint 0, edits 0-1, checkpoint 2: stopped before edit 2
    ("sequential", "memit", 5, 3),  # checkpoint 0, edits 0-1: stopped between edit 1 and its due checkpoint 2
    ("sequential", "memit", 5, 2),  # checkpoint 0, edit 0: stopped between an edit and nothing due
    ("batch", "memit,ft", 3, 4),  # memit's batch (3 records and a retention pass, one write) finished, ft's not
])
def test_an_interrupted_evaluation_resumes_to_the_uninterrupted_result(tiny_trained, tiny_kg, tmp_path, capsys,
                                                                       monkeypatch, mode, methods, num_edits, stop_after):
    hparams = tmp_path / "memit.yaml"
    hparams.write_text(MEMIT)
    extra = ["--methods", methods, "--mode", mode, "--num-edits", str(num_edits), "--every", "2"]
    if "memit" in methods:
        extra += ["--hparams", f"memit={hparams}"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_cli(run_editing_eval.main, eval_args(tiny_trained, tiny_kg, whole, *extra)) == 0
    capsys.readouterr()

    with monkeypatch.context() as patch:
        patch.setattr(jsonl, "append", InterruptAfter(stop_after))
        assert run_cli(run_editing_eval.main, eval_args(tiny_trained, tiny_kg, parts, *extra)) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1:]  # after transformers' loading bar
    assert err == [f"interrupted by SIGINT: kept {stop_after} finished records in {parts / 'eval_records.jsonl'}; "
                   "to go on, run the same command with --resume"]
    assert not (parts / "eval_summary.json").exists()
    assert not [p for p in parts.iterdir() if p.name.startswith(".")]  # no temporary files
    with open(parts / "eval_records.jsonl", "a") as handle:
        handle.write('{"kind": "edit", "method": "ro')  # a line torn by the kill

    assert run_cli(run_editing_eval.main, eval_args(tiny_trained, tiny_kg, parts, *extra, "--resume")) == 0
    assert run_contents(parts) == run_contents(whole)


def test_a_batch_whose_retention_line_was_torn_is_redone_once(tiny_trained, tiny_kg, tmp_path, capsys, monkeypatch):
    hparams = tmp_path / "memit.yaml"
    hparams.write_text(MEMIT)
    extra = ["--methods", "memit", "--mode", "batch", "--num-edits", "3", "--hparams", f"memit={hparams}"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_cli(run_editing_eval.main, eval_args(tiny_trained, tiny_kg, whole, *extra)) == 0
    with monkeypatch.context() as patch:
        patch.setattr(jsonl, "append", InterruptAfter(4))
        assert run_cli(run_editing_eval.main, eval_args(tiny_trained, tiny_kg, parts, *extra)) == 130
    log = parts / "eval_records.jsonl"
    lines = log.read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["edit"] * 3 + ["retention"]
    log.write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])  # the retention line torn by the kill
    with monkeypatch.context() as patch:  # the redone batch is interrupted too: its records are written twice
        patch.setattr(jsonl, "append", InterruptAfter(1))
        assert run_cli(run_editing_eval.main, eval_args(tiny_trained, tiny_kg, parts, *extra, "--resume")) == 130
    assert len(log.read_text().splitlines()) == 7
    assert run_cli(run_editing_eval.main, eval_args(tiny_trained, tiny_kg, parts, *extra, "--resume")) == 0
    assert run_contents(parts) == run_contents(whole)


def test_a_bad_cache_limit_is_refused_before_a_run_begins(tiny_trained, tiny_kg, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    monkeypatch.setenv("KG_ROME_CACHE_LIMIT", "lots")
    assert run_cli(run_editing_eval.main, eval_args(tiny_trained, tiny_kg, out, "--num-edits", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: $KG_ROME_CACHE_LIMIT: cache size limit 'lots' is not a size; allowed: a number of bytes "
                   "with an optional unit K, M, G or T (e.g. 500M, 8G), or none"]
    assert not out.exists()


def test_resume_names_which_input_file_changed(tiny_trained, tiny_kg, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_trained[0], model)
    args = ["--model-dir", str(model), "--kg-file", str(tiny_kg.graph_path), "--device", "cpu", "--no-progress",
            "--output-dir", str(tmp_path / "eval"), "--num-edits", "1"]
    assert run_cli(run_editing_eval.main, args) == 0
    log = json.loads((model / "train_log.json").read_text())
    (model / "train_log.json").write_text(json.dumps({**log, "note": "changed"}))
    capsys.readouterr()
    assert run_cli(run_editing_eval.main, [*args, "--resume"]) == 2
    assert "--resume: model_sha256.train_log.json is " in capsys.readouterr().err


def test_resume_refuses_other_parameters_and_a_directory_without_a_run(tiny_trained, tiny_kg, tmp_path, capsys):
    out = tmp_path / "eval"
    base = ["--methods", "rome", "--num-edits", "1"]
    assert run_cli(run_editing_eval.main, eval_args(tiny_trained, tiny_kg, tmp_path / "none", *base, "--resume")) == 2
    assert "nothing to resume in" in capsys.readouterr().err
    assert run_cli(run_editing_eval.main, eval_args(tiny_trained, tiny_kg, out, *base)) == 0
    capsys.readouterr()
    assert run_cli(run_editing_eval.main, eval_args(tiny_trained, tiny_kg, out, "--methods", "rome", "--num-edits",
                                                    "1", "--seed", "3", "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume: seed is 3 here but 0 in the run in" in err


def test_sigterm_stops_an_evaluation_cleanly_and_it_resumes(tiny_trained, tiny_kg, tmp_path):
    out = tmp_path / "eval"
    args = eval_args(tiny_trained, tiny_kg, out, "--methods", "rome", "--num-edits", "6")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "run_editing_eval.py"), *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = out / "eval_records.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if records.is_file() and records.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("interrupted by SIGTERM: kept ")
    assert "--resume" in err and not [p for p in out.iterdir() if p.name.startswith(".")]
    kept = len(records.read_text().splitlines())
    assert 1 <= kept < 6
    assert run_cli(run_editing_eval.main, [*args, "--resume"]) == 0
    summary = json.loads((out / "eval_summary.json").read_text())
    assert summary["methods"]["rome"]["num_edits"] == 6 and len(records.read_text().splitlines()) == 6


def test_interrupted_names_the_signal_and_its_exit_status():
    assert Interrupted(signal.SIGTERM).exit_status == 143 and Interrupted().exit_status == 130
    assert Interrupted(signal.SIGTERM, "3 records in x", "resume").message() == \
        "interrupted by SIGTERM: kept 3 records in x; resume"


# ------------------------------------------------------------------ unwritable outputs


def test_an_output_path_that_is_a_file_is_refused_before_any_work(tiny_trained, tiny_kg, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out in (blocker, blocker / "eval"):
        assert run_cli(run_editing_eval.main, eval_args(tiny_trained, tiny_kg, out, "--num-edits", "1")) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "a file, not a directory" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_directory_is_refused_before_any_work(tiny_trained, tiny_kg, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert run_cli(run_editing_eval.main, eval_args(tiny_trained, tiny_kg, locked / "eval", "--num-edits", "1")) == 2
        assert "is not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)


# ------------------------------------------------------------------ training that resumes


def test_a_training_resumed_from_its_checkpoint_ends_bit_identical(tiny_train_config, tmp_path, monkeypatch):
    import dataclasses

    from src.lm import train as train_module
    from src.pipelines.train_model import checkpoint_path, train_and_save

    whole = train_and_save(tiny_train_config, tmp_path / "whole", progress=False)
    assert whole.result.steps == 100  # the tiny recipe reaches its target at the 4th evaluation

    evaluations, accuracy = [], train_module.fact_accuracy

    def interrupted_at_the_third(*args, **kwargs):
        evaluations.append(1)
        if len(evaluations) == 3:  # step 75: the last checkpoint is step 50's
            raise KeyboardInterrupt
        return accuracy(*args, **kwargs)

    parts = tmp_path / "parts"
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "fact_accuracy", interrupted_at_the_third)
        with pytest.raises(Interrupted) as stopped:
            train_and_save(tiny_train_config, parts, progress=False, checkpoint_every=25)
    assert f"kept the training state at step 50 in {checkpoint_path(parts)}" in stopped.value.message()
    assert not parts.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    other = dataclasses.replace(tiny_train_config, seed=1)
    with pytest.raises(InputError, match="is of another config or KG"):
        train_and_save(other, parts, progress=False, resume=True)

    resumed = train_and_save(tiny_train_config, parts, progress=False, checkpoint_every=25, resume=True)
    assert (parts / "model.safetensors").read_bytes() == (whole.model_dir / "model.safetensors").read_bytes()
    timing = ("seconds", "eval_seconds")
    strip = lambda history: [{k: v for k, v in h.items() if k not in timing} for h in history]  # noqa: E731
    assert strip(resumed.result.history) == strip(whole.result.history)
    assert resumed.result.flops == whole.result.flops and not checkpoint_path(parts).exists()


def test_resume_without_a_checkpoint_is_one_line(tiny_train_config, tmp_path):
    from src.pipelines.train_model import train_and_save

    with pytest.raises(InputError, match=r"nothing to resume: no training checkpoint at .*model.checkpoint.pt"):
        train_and_save(tiny_train_config, tmp_path / "model", progress=False, resume=True)


# ------------------------------------------------------------------ locating that resumes


def test_an_interrupted_locating_run_resumes_to_the_same_results(tiny_trained, tiny_kg, tmp_path, capsys, monkeypatch):
    import numpy as np

    import run_locating_batch
    from src.edit.causal_tracing import FACTS_PER_FORWARD

    args = ["--model-dir", str(tiny_trained[0]), "--kg-file", str(tiny_kg.graph_path), "--device", "cpu",
            "--num-samples", str(2 * FACTS_PER_FORWARD + 3), "--num-noise-samples", "2", "--no-plots"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_cli(run_locating_batch.main, [*args, "--output-dir", str(whole)]) == 0
    with monkeypatch.context() as patch:
        patch.setattr(jsonl, "append", InterruptAfter(FACTS_PER_FORWARD))  # after the first block of facts
        assert run_cli(run_locating_batch.main, [*args, "--output-dir", str(parts)]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"interrupted by SIGINT: kept {FACTS_PER_FORWARD} traced facts in ") and "--resume" in err
    assert {p.name for p in parts.iterdir()} == {"locating_run.json", "locating_progress.jsonl"}
    assert run_cli(run_locating_batch.main, [*args, "--output-dir", str(parts), "--seed", "1", "--resume"]) == 2
    assert "--resume: seed is 1 here but 42" in capsys.readouterr().err
    progress = parts / "locating_progress.jsonl"
    lines = progress.read_text().splitlines()
    progress.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:30])  # the block's last line torn: it is redone
    assert run_cli(run_locating_batch.main, [*args, "--output-dir", str(parts), "--resume"]) == 0
    assert {p.name for p in parts.iterdir()} == {p.name for p in whole.iterdir()}  # the progress files are gone
    summaries = [json.loads((d / "locating_summary.json").read_text()) for d in (whole, parts)]
    for summary in summaries:
        summary.pop("seconds")
        summary["parameters"].pop("output_dir")
    assert summaries[0] == summaries[1]
    arrays = [np.load(d / "traces.npz") for d in (whole, parts)]
    assert sorted(arrays[0]) == sorted(arrays[1]) and all(np.array_equal(arrays[0][k], arrays[1][k]) for k in arrays[0])


def test_every_script_refuses_an_output_path_inside_a_file(tiny_trained, tiny_kg, tmp_path, capsys):
    import run_editing_single
    import run_locating_batch
    import visualize_locating
    from src.cli import make_kg, train_lm

    blocker = tmp_path / "file"
    blocker.write_text("")
    inside = str(blocker / "out")
    model, graph = str(tiny_trained[0]), str(tiny_kg.graph_path)
    calls = [
        (run_locating_batch.main, ["--model-dir", model, "--kg-file", graph, "--output-dir", inside]),
        (run_editing_single.main, ["--model-dir", model, "--kg-corpus", str(tiny_kg.corpus_path), "-s", "E_000", "-r",
                                   "R_00", "-o", "E_001", "--output-dir", inside]),
        (visualize_locating.main, ["--model-dir", model, "-s", "E_000", "-r", "R_00", "--output", f"{inside}/t.png"]),
        (make_kg.main, ["--output-dir", inside]),
        (train_lm.main, ["--output-dir", f"{inside}/model"]),
    ]
    for main, args in calls:
        assert run_cli(main, args) == 2, main.__module__
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "a file, not a directory" in err[0], (main.__module__, err)
    assert blocker.read_text() == ""


def test_warnings_under_the_cli_are_one_line_and_the_format_is_given_back():
    shown = []

    def main(argv):  # how a warning is written while the command runs (pytest records warnings, so none is printed)
        shown.append(warnings.formatwarning("cache entry x cannot be used (damaged); it is recomputed", CacheWarning,
                                            "src/utils/cache.py", 99, "warnings.warn(...)"))
        return 0

    before = warnings.formatwarning
    assert run_cli(main, []) == 0
    assert shown == ["warning: cache entry x cannot be used (damaged); it is recomputed\n"]
    assert warnings.formatwarning is before
