"""python -m src.cli.train_lm --config configs/train_gpt_small.yaml [--output-dir DIR] [--skip-if-trained]
    [--checkpoint-every N] [--resume]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from src.cli.common import run_cli
from src.lm.config import load_train_config
from src.pipelines import defaults
from src.pipelines.train_model import existing_training, train_and_save, training_fingerprint
from src.utils.errors import InputError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a GPT-2 on a KG corpus until it knows the facts.")
    parser.add_argument("--config", default=defaults.TRAIN_CONFIG, help="training YAML (default: %(default)s)")
    parser.add_argument("--output-dir", default=None, help="override the config's output_dir")
    parser.add_argument("--skip-if-trained", action="store_true",
                        help="do nothing when the output dir holds a model trained from the same config and KG")
    parser.add_argument("--checkpoint-every", type=int, default=100, metavar="N",
                        help="save a resumable training state every N steps beside the output dir (default: "
                             "%(default)s; 0: never)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted training from its checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    config = load_train_config(args.config)
    output_dir = Path(args.output_dir) if args.output_dir else config.output_dir
    if args.skip_if_trained:
        log = existing_training(output_dir, training_fingerprint(config))
        if log is not None:
            accuracy = log["result"]["final_accuracy"]
            print(f"Skipping training: {output_dir} already holds a model trained from this config and KG "
                  f"(fact accuracy {accuracy:.4f}). Delete it or drop --skip-if-trained to retrain.")
            return 0
    if args.checkpoint_every < 0:
        raise InputError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    trained = train_and_save(config, output_dir, progress=not args.no_progress,
                             checkpoint_every=args.checkpoint_every or None, resume=args.resume)
    result = trained.result
    status = "reached" if result.reached_target else "did NOT reach"
    print(f"Trained {result.steps} steps in {result.seconds:.1f} s: fact accuracy {result.final_accuracy:.4f} "
          f"({status} target {config.optim.target_accuracy}) -> {trained.model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
