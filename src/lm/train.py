"""Train a GPT-2 on a KG corpus until it knows the facts.

Recipe (measured in benchmarks/bench_training.py): the loss is taken on object tokens only (the subject and
relation tokens are unpredictable, so an all-token loss spends most of its gradient on noise), AdamW with a short
linear warm-up then cosine decay, no dropout, large batches. Training stops as soon as fact accuracy (argmax object
after `"{s} {r}"`, over all facts) reaches `target_accuracy`, or when `max_steps` is spent.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.kg.corpus import parse_sentence
from src.kg.graph import Fact
from src.lm.fact_accuracy import fact_accuracy
from src.lm.flops import FlopCounter
from src.lm.token_ids import starts_with_bos
from src.lm.model import ModelConfig
from src.utils.errors import InputError
from src.utils.io import atomic_path


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation settings. `loss_on`: "objects" (object tokens only) or "all" (every next token).
    `embedding_lr_scale`: the embeddings' (token, position and a tied output embedding) learning rate as a multiple
    of `lr`."""

    batch_size: int = 512
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 100
    max_steps: int = 2500
    grad_clip: float = 1.0
    eval_every: int = 100
    target_accuracy: float = 0.99
    loss_on: str = "objects"
    embedding_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.loss_on not in ("objects", "all"):
            raise InputError(f"unknown loss_on '{self.loss_on}'; allowed: objects, all")
        if self.batch_size < 1 or self.max_steps < 1 or self.eval_every < 1:
            raise InputError("batch_size, max_steps and eval_every must be >= 1")
        if self.embedding_lr_scale <= 0:
            raise InputError(f"embedding_lr_scale must be > 0, got {self.embedding_lr_scale}")
        object.__setattr__(self, "betas", tuple(self.betas))


@dataclass(frozen=True)
class TrainResult:
    steps: int
    final_accuracy: float
    reached_target: bool
    seconds: float
    history: tuple[dict, ...]
    flops: float = 0.0  # training FLOPs spent (`src.lm.flops.FlopCounter`), evaluations left out

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Checkpoints:
    """A resumable training state at `path`, saved every `every` steps (atomically; 0: never), for a training
    identified by `fingerprint` (a checkpoint of another training is refused). resume: start from the saved state."""

    path: Path
    every: int = 100
    fingerprint: str = ""
    resume: bool = False

    def __post_init__(self) -> None:
        if self.every < 0:
            raise InputError(f"--checkpoint-every must be >= 0, got {self.every}")

    def save(self, state: dict) -> None:
        with atomic_path(self.path) as tmp:
            torch.save({"format": 1, "fingerprint": self.fingerprint, **state}, tmp)

    def load(self) -> dict:
        """The saved state; one InputError line when there is none, it cannot be read, or it is another training's."""
        if not self.path.is_file():
            raise InputError(f"nothing to resume: no training checkpoint at {self.path} (train without --resume)")
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file fails in any of torch.load's ways
            raise InputError(f"training checkpoint {self.path} cannot be read ({type(exc).__name__}); delete it and "
                             "train without --resume") from None
        if saved.get("fingerprint") != self.fingerprint:
            raise InputError(f"training checkpoint {self.path} is of another config or KG; train without --resume "
                             "(or with the config it was made with)")
        return saved

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class EncodedCorpus:
    """Corpus lines grouped by length so that batches need no padding.

    buckets[n] = (inputs, targets): inputs (lines, n) are each line without its last token; targets (lines, n) are
    the next tokens, with -100 where no loss is taken.
    """

    buckets: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(repr=False)

    def __len__(self) -> int:
        return sum(len(inputs) for inputs, _ in self.buckets.values())


def encode_corpus(lines: list[str], tokenizer: PreTrainedTokenizerBase, loss_on: str, max_positions: int) -> EncodedCorpus:
    """Token ids of every line (behind BOS when the tokenizer adds one), grouped by length, with targets: the next
    token, or -100 where no loss is taken. loss_on "objects": only the tokens of object words (every piece of a
    subword-split object). Words are whitespace-separated; a tokenizer must not merge tokens across them."""
    grouped: dict[int, tuple[list[list[int]], list[list[int]]]] = {}
    bos = starts_with_bos(tokenizer)
    for line_number, line in enumerate(lines, start=1):
        try:
            facts = parse_sentence(line)
        except ValueError as exc:
            raise InputError(f"corpus line {line_number}: {exc}") from None
        encoding = tokenizer(line, add_special_tokens=False)
        ids, words = list(encoding["input_ids"]), list(encoding.word_ids())
        if bos:
            ids, words = [tokenizer.bos_token_id] + ids, [None] + words
        if tokenizer.unk_token_id in ids:
            raise InputError(f"corpus line {line_number} has a word the tokenizer does not know: {line!r}")
        if len(ids) > max_positions:
            raise InputError(f"corpus line {line_number} has {len(ids)} tokens, more than n_positions={max_positions}")
        if len({w for w in words if w is not None}) != len(line.split()):
            raise InputError(f"corpus line {line_number}: the tokenizer does not keep words apart ({line!r})")
        targets = list(ids[1:])
        if loss_on == "objects":
            object_words = {4 * i + 2 for i in range(len(facts))}  # "s r o ; s r o ..."
            targets = [t if words[p + 1] in object_words else -100 for p, t in enumerate(targets)]
        inputs_list, targets_list = grouped.setdefault(len(ids) - 1, ([], []))
        inputs_list.append(ids[:-1])
        targets_list.append(targets)
    return EncodedCorpus(
        buckets={n: (torch.tensor(i), torch.tensor(t)) for n, (i, t) in sorted(grouped.items())}
    )


def batch_schedule(data: EncodedCorpus, batch_size: int, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """One epoch: every line once, in batches of one length each, batches in random order."""
    batches = []
    for length, (inputs, _) in data.buckets.items():
        order = rng.permutation(len(inputs))
        batches.extend((length, order[i : i + batch_size]) for i in range(0, len(order), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def lr_factor(step: int, config: OptimConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine


def train_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus_lines: list[str],
    facts: list[Fact],
    config: OptimConfig,
    seed: int,
    progress: bool = True,
    on_eval: Callable[[dict], None] | None = None,
    checkpoints: Checkpoints | None = None,
) -> TrainResult:
    """Train in place on `corpus_lines` until fact accuracy on `facts` reaches the target (CPU: bit-reproducible).
    checkpoints: save a resumable state every `checkpoints.every` steps, and with `checkpoints.resume` start from
    the saved one (a resumed training ends with the same weights and history as an uninterrupted one, timings
    aside)."""
    torch.manual_seed(seed)
    data = encode_corpus(corpus_lines, tokenizer, config.loss_on, model.config.max_position_embeddings)
    device = next(model.parameters()).device
    buckets = {n: (i.to(device), t.to(device)) for n, (i, t) in data.buckets.items()}
    decay, no_decay, embedding = [], [], []
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    for param in model.parameters():  # no weight decay on embeddings, biases and norms
        if id(param) in embeddings:
            (embedding if config.embedding_lr_scale != 1.0 else no_decay).append(param)
        else:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if embedding:
        groups.append({"params": embedding, "weight_decay": 0.0, "lr": config.lr * config.embedding_lr_scale})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    order_rng = np.random.default_rng(seed)
    history: list[dict] = []
    start = time.perf_counter()
    model.train()
    schedule: list[tuple[int, np.ndarray]] = []
    accuracy = 0.0
    bar = tqdm(total=config.max_steps, desc="train", unit="step", disable=not progress)
    step = 0
    running_loss = float("nan")
    counter, flops, eval_seconds = FlopCounter.of(model), 0.0, 0.0
    first = 1
    if checkpoints is not None and checkpoints.resume:
        saved = checkpoints.load()
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        order_rng.bit_generator.state = saved["order_rng"]
        torch.set_rng_state(saved["torch_rng"])
        schedule = [(length, np.asarray(rows, dtype=np.int64)) for length, rows in saved["schedule"]]
        history, running_loss, accuracy = list(saved["history"]), saved["running_loss"], saved["accuracy"]
        flops, eval_seconds, first = saved["flops"], saved["eval_seconds"], saved["step"] + 1
        start -= saved["seconds"]
        bar.update(saved["step"])
    for step in range(first, config.max_steps + 1):
        if not schedule:
            schedule = batch_schedule(data, config.batch_size, order_rng)
        length, rows = schedule.pop()
        inputs, targets = buckets[length]
        rows_t = torch.as_tensor(rows, device=device)
        batch_targets = targets[rows_t]
        hidden = model.base_model(input_ids=inputs[rows_t]).last_hidden_state  # (B, T, d): no logits for every token
        selected = batch_targets != -100
        logits = model.get_output_embeddings()(hidden[selected])
        loss = F.cross_entropy(logits.float(), batch_targets[selected])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        running_loss = loss.item() if math.isnan(running_loss) else 0.9 * running_loss + 0.1 * loss.item()
        flops += counter.step(len(rows), length, int(selected.sum()))
        bar.update(1)
        if step % config.eval_every == 0 or step == config.max_steps:
            eval_start = time.perf_counter()
            accuracy = fact_accuracy(model, tokenizer, facts).accuracy
            eval_seconds += time.perf_counter() - eval_start
            record = {"step": step, "loss": running_loss, "accuracy": accuracy, "lr": scheduler.get_last_lr()[0],
                      "seconds": time.perf_counter() - start, "flops": flops, "eval_seconds": eval_seconds}
            history.append(record)
            if on_eval:
                on_eval(record)
            bar.set_postfix(loss=f"{running_loss:.3f}", acc=f"{accuracy:.3f}")
            if accuracy >= config.target_accuracy:
                break
        if checkpoints is not None and checkpoints.every and step % checkpoints.every == 0 and step < config.max_steps:
            checkpoints.save({
                "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "order_rng": order_rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "schedule": [(n, rows.tolist()) for n, rows in schedule],
                "history": history, "running_loss": running_loss, "accuracy": accuracy, "flops": flops,
                "eval_seconds": eval_seconds, "seconds": time.perf_counter() - start})
    bar.close()
    model.eval()
    return TrainResult(
        steps=step,
        final_accuracy=accuracy,
        reached_target=accuracy >= config.target_accuracy,
        seconds=time.perf_counter() - start,
        history=tuple(history),
        flops=flops,
    )


__all__ = ["Checkpoints", "ModelConfig", "OptimConfig", "TrainResult", "train_model", "encode_corpus", "lr_factor"]
