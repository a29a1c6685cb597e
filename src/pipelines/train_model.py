"""Train-and-save: KG directory + TrainConfig -> a loadable model directory with train_log.json and a curve PNG."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers

from src.kg.build import CORPUS_FILE, GRAPH_FILE
from src.kg.corpus import read_corpus
from src.kg.graph import read_graph_jsonl
from src.lm.config import TrainConfig
from src.lm.model import build_model
from src.lm.tokenizer import build_kg_tokenizer, corpus_words
from src.lm.train import Checkpoints, OptimConfig, TrainResult, train_model
from src.utils.errors import InputError
from src.utils.interrupts import note_kept
from src.utils.io import atomic_directory, atomic_write_json, require_writable_dir, sha256_file, sha256_json
from src.viz.training import plot_training_curve

TRAIN_LOG = "train_log.json"
CURVE_PNG = "training_curve.png"
# Optimiser settings hashed only where they differ from their OptimConfig default, at which they change nothing:
# adding such an option leaves the fingerprints of trained models, and so the models, as they are.
HASHED_WHEN_SET = ("embedding_lr_scale",)


def training_fingerprint(config: TrainConfig) -> str:
    """Hash of everything that determines the trained weights: model and optimiser settings, seed, KG and corpus bytes."""
    graph_path, corpus_path = config.kg_dir / GRAPH_FILE, config.kg_dir / CORPUS_FILE
    for path in (graph_path, corpus_path):
        if not path.is_file():
            raise InputError(f"KG file not found: {path}", missing="kg")
    settings = config.to_dict()
    settings.pop("kg_dir")
    settings.pop("output_dir")
    defaults = asdict(OptimConfig())
    for name in HASHED_WHEN_SET:
        if settings["optim"][name] == defaults[name]:
            del settings["optim"][name]
    return sha256_json({"settings": settings, "graph": sha256_file(graph_path), "corpus": sha256_file(corpus_path)})


def existing_training(model_dir: Path, fingerprint: str) -> dict | None:
    """The train_log of a finished training with this fingerprint in `model_dir`, else None."""
    log_path = model_dir / TRAIN_LOG
    if not (model_dir / "config.json").is_file() or not log_path.is_file():
        return None
    try:
        log = json.loads(log_path.read_text())
    except json.JSONDecodeError:
        return None
    return log if log.get("fingerprint") == fingerprint else None


@dataclass(frozen=True)
class TrainedModel:
    model_dir: Path
    result: TrainResult
    fingerprint: str


def checkpoint_path(output_dir: Path) -> Path:
    """Where a training to `output_dir` keeps its resumable state: beside the model directory, removed once the model
    is saved."""
    return output_dir.parent / f"{output_dir.name}.checkpoint.pt"


def train_and_save(config: TrainConfig, output_dir: Path | None = None, progress: bool = True,
                   checkpoint_every: int | None = None, resume: bool = False) -> TrainedModel:
    """Train a model from `config` and save it to `output_dir` (default the config's) as a whole, atomically.
    checkpoint_every: save a resumable state every this many steps (None or 0: never); resume: continue from it."""
    output_dir = Path(output_dir or config.output_dir)
    require_writable_dir(output_dir.parent, "output directory's parent")
    fingerprint = training_fingerprint(config)
    checkpoints = Checkpoints(checkpoint_path(output_dir), checkpoint_every or 0, fingerprint, resume)
    if not resume:
        checkpoints.remove()  # a new training: another one's state must not be taken for this one's
    graph = read_graph_jsonl(config.kg_dir / GRAPH_FILE)
    lines = read_corpus(config.kg_dir / CORPUS_FILE)
    words = corpus_words(lines) | set(graph.entities) | set(graph.relations)
    tokenizer = build_kg_tokenizer(config.tokenizer.kind, lines, words, config.tokenizer.vocab_size,
                                   config.tokenizer.bos)
    torch.manual_seed(config.seed)
    model = build_model(config.model, tokenizer)
    started = time.time()
    try:
        result = train_model(model, tokenizer, lines, list(graph.facts), config.optim, config.seed, progress=progress,
                             checkpoints=checkpoints)
    except KeyboardInterrupt as exc:
        if not checkpoints.path.is_file():
            why = "no checkpoint was due yet" if checkpoints.every else "checkpoints are off: --checkpoint-every 0"
            raise note_kept(exc, f"nothing ({why})", None) from None
        step = torch.load(checkpoints.path, map_location="cpu", weights_only=True, mmap=True)["step"]
        raise note_kept(exc, f"the training state at step {step} in {checkpoints.path}",
                        "to go on, run the same command with --resume") from None
    log = {
        "fingerprint": fingerprint,
        "seed": config.seed,
        "config": config.to_dict(),
        "kg": {"graph": str(config.kg_dir / GRAPH_FILE), "num_facts": len(graph), "num_corpus_lines": len(lines)},
        "result": {k: v for k, v in result.to_dict().items() if k != "history"},
        "history": list(result.history),
        "wall_seconds": time.time() - started,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
    }
    with atomic_directory(output_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / TRAIN_LOG, log)
        plot_training_curve(result.history, tmp / CURVE_PNG, config.optim.target_accuracy)
    checkpoints.remove()
    return TrainedModel(model_dir=output_dir, result=result, fingerprint=fingerprint)
