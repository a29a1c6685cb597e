#!/usr/bin/env python3
"""Evaluate editing methods on counterfactual KG edits:
    ./run_editing_eval.sh --methods rome,ft,memit --num-edits 200 --mode independent

Writes eval_summary.json, eval_records.jsonl (a line per record as it is finished), eval_run.json,
metrics_by_method.png (and sequential.png) to --output-dir; --resume continues an interrupted run there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from src.cli.common import add_dtype_argument, run_cli
from src.cli.paths import REPO_ROOT, repo_path
from src.pipelines import defaults
from src.pipelines.evaluate_methods import MODES, EvalConfig, check_inputs, run_evaluation
from src.edit.methods import METHODS
from src.pipelines.distributed import relaunch_with_torchrun, started_by_torchrun
from src.utils.errors import InputError


def parse_hparams(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        method, sep, path = item.partition("=")
        if not sep or not method or not path:
            raise InputError(f"--hparams expects METHOD=FILE, got '{item}'")
        out[method] = path
    return out


def parse_args(argv: Sequence[str] | None) -> tuple[EvalConfig, int, bool]:
    p = argparse.ArgumentParser(description="Evaluate editing methods on counterfactual edits of KG facts.")
    p.add_argument("--model-dir", default=repo_path(defaults.MODEL_DIR))
    p.add_argument("--kg-file", default=repo_path(defaults.KG_FILE))
    p.add_argument("--kg-corpus", default=None, help="corpus for key statistics and prefixes (default: "
                   "corpus.train.txt beside --kg-file)")
    p.add_argument("--methods", default="rome", help=f"comma-separated, from: {', '.join(METHODS)} (default: rome)")
    p.add_argument("--num-edits", type=int, default=100)
    p.add_argument("--mode", default="independent", choices=MODES)
    p.add_argument("--every", type=int, default=50, help="sequential mode: checkpoint every this many edits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default=repo_path("outputs/editing_eval"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    add_dtype_argument(p)
    p.add_argument("--hparams", action="append", default=[], metavar="METHOD=FILE",
                   help="hyperparameters YAML for one method (repeatable; default: configs/<method>_gpt_small.yaml)")
    p.add_argument("--num-neighbors", type=int, default=20, help="same-relation facts per edit for specificity")
    p.add_argument("--num-random", type=int, default=20, help="random facts per edit for specificity")
    p.add_argument("--allowed-fraction", type=float, default=0.5,
                   help="share of the KG's facts the methods may use (seeded by --seed); the rest are scored")
    p.add_argument("--procs", type=int, default=1, help="independent mode: split the edits across this many "
                   "processes on this machine, one CPU thread each (torchrun; default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --output-dir (same "
                   "parameters) from its finished records")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.procs < 1:
        raise InputError(f"--procs must be >= 1, got {a.procs}")
    methods = tuple(m.strip() for m in a.methods.split(",") if m.strip())
    return EvalConfig(model_dir=a.model_dir, kg_file=a.kg_file, kg_corpus=a.kg_corpus, methods=methods,
                      num_edits=a.num_edits, mode=a.mode, seed=a.seed, output_dir=a.output_dir, device=a.device, dtype=a.dtype,
                      hparams=parse_hparams(a.hparams), every=a.every, num_neighbors=a.num_neighbors,
                      num_random=a.num_random, allowed_fraction=a.allowed_fraction, progress=not a.no_progress), a.procs, a.resume


def fmt(metric: dict, scale: float = 1.0) -> str:
    """mean [low, high]; "n/a" where nothing was measured."""
    if metric["n"] == 0:
        return "n/a"
    return f"{metric['mean'] * scale:.3f} [{metric['low'] * scale:.2f},{metric['high'] * scale:.2f}]"


def main(argv: Sequence[str] | None = None) -> int:
    config, procs, resume = parse_args(argv)
    if procs > 1 and not started_by_torchrun():
        check_inputs(config, REPO_ROOT, world_size=procs)
        relaunch_with_torchrun(Path(__file__).resolve(), sys.argv[1:] if argv is None else argv, procs)
    report = run_evaluation(config, REPO_ROOT, resume=resume)
    if report is None:  # a torchrun rank other than 0: rank 0 writes and reports
        return 0
    columns = [("efficacy", "efficacy"), ("paraphrase", "paraphrase"), ("context_robustness", "context"),
               ("specificity_neighbourhood", "neighbourhood"), ("specificity_relation", "same rel."),
               ("specificity_subject", "subject"), ("specificity_random", "random"),
               ("retention_drop_points", "ret.drop(pt)"), ("seconds", "s/edit")]
    split = config.split
    print(f"\n{config.num_edits} edits, mode {config.mode}, seed {config.seed}; specificity and retention on facts held "
          f"out from the methods ({1 - split.allowed_fraction:.0%} of the KG); mean [95% interval]")
    print(f"{'method':<15}" + "".join(f"{label:>21}" for _, label in columns))
    for method, data in report.summary.items():
        print(f"{method:<15}" + "".join(f"{fmt(data['metrics'][name]):>21}" for name, _ in columns))
        for point in data["checkpoints"]:
            past = "n/a" if point["past_efficacy"] is None else f"{point['past_efficacy']:.3f}"
            print(f"{'':<15}after {point['num_edits']:>4} edits: retention {point['retention']:.3f}, "
                  f"past-edit efficacy {past}")
    methods = list(report.summary)
    for i, method in enumerate(methods):
        for other in methods[i + 1 :]:
            diffs = report.summary[method]["compared"].get(other, {})
            shown = [f"{name} {fmt(d)}{'*' if not d['low'] <= 0 <= d['high'] else ''}" for name, d in diffs.items()
                     if d["n"] and name in ("efficacy", "context_robustness", "specificity_neighbourhood",
                                            "specificity_subject", "retention_drop_points")]
            if shown:
                print(f"{method} - {other} (paired; * interval excludes 0): " + "; ".join(shown))
    print(f"-> {report.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
