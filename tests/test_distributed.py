"""torchrun sharding of run_locating_batch.py and run_editing_eval.py: 2 CPU processes (gloo) write what one process
writes (20 samples: blocks of 8 traced facts, so both processes trace some)."""

import json
import os
import subprocess
import sys

import numpy as np

from src.pipelines.distributed import Shard
from tests.conftest import REPO_ROOT


def test_shard_takes_every_world_size_th_item():
    shards = [Shard(rank, 3) for rank in range(3)]
    assert [s.take(list(range(7))) for s in shards] == [[0, 3, 6], [1, 4], [2, 5]]
    assert [i for i in range(7) if shards[1].owns(i)] == [1, 4]
    assert Shard(0, 1).gather("x") == ["x"] and Shard(0, 1).is_main


def run(command, out, tiny_trained, tiny_kg):
    args = [*command, str(REPO_ROOT / "run_locating_batch.py"), "--model-dir", str(tiny_trained[0]),
            "--kg-file", str(tiny_kg.graph_path), "--num-samples", "20", "--num-noise-samples", "3", "--no-plots",
            "--device", "cpu", "--output-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "locating_summary.json").read_text())
    for key in ("seconds",):
        summary.pop(key)
    summary["parameters"].pop("output_dir")
    return summary, np.load(out / "traces.npz")


def test_torchrun_two_processes_write_the_single_process_results(tiny_trained, tiny_kg, tmp_path):
    single, single_arrays = run([sys.executable], tmp_path / "one", tiny_trained, tiny_kg)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    sharded, sharded_arrays = run(torchrun, tmp_path / "two", tiny_trained, tiny_kg)
    assert sharded == single
    assert sorted(sharded_arrays.files) == sorted(single_arrays.files) and len(single_arrays.files) > 0
    assert all(np.array_equal(sharded_arrays[k], single_arrays[k]) for k in single_arrays.files)


def test_torchrun_independent_evaluation_matches_one_process(tiny_trained, tiny_kg, tmp_path):
    fast = tmp_path / "memit.yaml"
    fast.write_text("layers: [1, 2]\nnum_context_prefixes: 3\nmom2_source: corpus\nmom2_update_weight: 100\n")

    def records(command, out, *extra):
        args = [*command, str(REPO_ROOT / "run_editing_eval.py"), *extra, "--model-dir", str(tiny_trained[0]),
                "--kg-file", str(tiny_kg.graph_path), "--device", "cpu", "--methods", "memit", "--num-edits", "4",
                "--hparams", f"memit={fast}", "--no-progress", "--output-dir", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "KG_ROME_CACHE": str(tmp_path)}
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        lines = [json.loads(line) for line in (out / "eval_records.jsonl").read_text().splitlines()]
        return [{k: v for k, v in line.items() if k != "seconds"} for line in lines]

    single = records([sys.executable], tmp_path / "one")
    sharded = records([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
                      tmp_path / "two")
    assert [r["index"] for r in sharded] == [0, 1, 2, 3] and sharded == single
    assert records([sys.executable], tmp_path / "procs", "--procs", "2") == single  # starts torchrun itself


def test_procs_refuses_sequential_mode_before_starting_processes(tiny_trained, tiny_kg, tmp_path):
    args = [sys.executable, str(REPO_ROOT / "run_editing_eval.py"), "--procs", "2", "--mode", "sequential",
            "--model-dir", str(tiny_trained[0]), "--kg-file", str(tiny_kg.graph_path), "--output-dir", str(tmp_path)]
    result = subprocess.run(args, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: mode sequential edits one model step after step and cannot be split across 2 processes; run it in "
        "one (independent mode can be split)"]
