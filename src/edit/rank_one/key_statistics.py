"""Second-moment statistics of MLP keys, C = E[k k^T], over a text corpus, cached on disk.

k is the input of layer l's MLP output projection (after the activation). Sources:
  corpus        every token of every corpus line (the original ROME: keys "in the wild")
  fact_prompts  the last token of each fact's prompt `"s r"` (facts read from the corpus; under a `FactSplit`,
                its allowed facts only, so that no held-out fact's key enters C): the keys at which a KG model reads
                its facts out, i.e. where an edit at the last token must not leak
  both          the mean of the two
Corpus statistics include every training sentence, so every fact (as Wikipedia, GPT-2's training text, is where the
original ROME takes them); a split cannot hold facts out of them. The cache key hashes the model's weights, the
corpus bytes, the layer, the sample count, the source and the split, never a model name.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.model.hooks import Trace
from src.edit.model.speedups import FAST, SpeedPaths
from src.edit.prompts.kg_context import KGContext
from src.edit.model.layout import ModelLayout
from src.kg.corpus import require_corpus_file
from src.kg.graph import Fact
from src.kg.split import FactSplit
from src.lm.token_ids import starts_with_bos
from src.utils.batching import batches_by_key
from src.utils.errors import InputError
from src.utils.cache import DEFAULT_LIMIT, TensorCache, parse_size
from src.utils.io import sha256_file

SOURCES = ("corpus", "fact_prompts", "both")
# Columns per block of C's symmetric product: 36 of 64 blocks for d_ff 2048 (faster than 128 or 512 on a 2-core CPU).
SYMMETRIC_BLOCK = 256


def default_cache_dir() -> Path:
    """$KG_ROME_CACHE, else ~/.cache/kg_rome (never the working directory)."""
    return Path(os.environ.get("KG_ROME_CACHE", Path.home() / ".cache" / "kg_rome"))


def statistics_cache_limit() -> int:
    """Bytes of $KG_ROME_CACHE_LIMIT (a size such as 8G or 500M, or none: 0, no limit; default 8G)."""
    text = os.environ.get("KG_ROME_CACHE_LIMIT", DEFAULT_LIMIT)
    try:
        return parse_size(text)
    except InputError as exc:
        raise InputError(f"$KG_ROME_CACHE_LIMIT: {exc}") from None


def statistics_cache(cache_dir: str | Path | None = None) -> TensorCache:
    """The statistics cache: `<cache_dir>/mom2` (default `default_cache_dir()`), limited to $KG_ROME_CACHE_LIMIT,
    least recently used entries evicted first."""
    return TensorCache(Path(cache_dir or default_cache_dir()) / "mom2", statistics_cache_limit())


def weights_fingerprint(model: PreTrainedModel) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer's vocabulary and templates (which ids the text becomes, BOS included)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def stats_key(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, corpus_path: Path, layer: int,
              n_samples: int, source: str = "corpus", split: FactSplit | None = None) -> str:
    """Cache key: the weights, the tokenizer, the corpus bytes and every setting that changes C (the split only
    for fact_prompts: corpus keys do not depend on it)."""
    parts = [weights_fingerprint(model), tokenizer_fingerprint(tokenizer), f"bos={starts_with_bos(tokenizer)}",
             sha256_file(corpus_path), f"layer={layer}", f"n={n_samples}"]
    parts.append(f"source={source}")
    if source == "fact_prompts" and split is not None:
        parts.append(split.key())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def statistics_facts(corpus_path: str | Path, split: FactSplit | None = None) -> tuple[Fact, ...]:
    """The facts whose prompts source fact_prompts reads: the corpus' facts that `split` allows (all without one)."""
    return KGContext.from_corpus(corpus_path, split).facts


@dataclass(frozen=True)
class KeyPlan:
    """Which lines to run and how much each of their keys counts. A key depends only on the tokens up to its own
    (causal attention), so each distinct token prefix's key is taken once, at its first occurrence in a run line,
    weighted by how many keys of the statistics have that prefix; a line that is a prefix of another is not run.
    lines: token ids of the lines to run; weights: per run line, one weight per position (0: counted elsewhere)."""

    lines: tuple[tuple[int, ...], ...]
    weights: tuple[tuple[int, ...], ...]

    @property
    def num_keys(self) -> int:
        """Keys the statistics average over (every occurrence)."""
        return sum(sum(w) for w in self.weights)

    @property
    def num_distinct(self) -> int:
        """Keys that enter the product (weight > 0)."""
        return sum(1 for row in self.weights for w in row if w)

    @classmethod
    def plain(cls, encoded: Sequence[Sequence[int]], last_token_only: bool) -> "KeyPlan":
        """Every line run, every key counted once where it occurs (the reference)."""
        lines = tuple(tuple(ids) for ids in encoded if ids)
        weights = tuple(tuple([0] * (len(ids) - 1) + [1]) if last_token_only else (1,) * len(ids) for ids in lines)
        return cls(lines, weights)

    @classmethod
    def shared(cls, encoded: Sequence[Sequence[int]], last_token_only: bool) -> "KeyPlan":
        """Each distinct prefix's key once, weighted by its count (same C as `plain`, up to float rounding)."""
        lines = [tuple(ids) for ids in encoded if ids]
        counts: Counter[tuple[int, ...]] = Counter()
        proper_prefixes: set[tuple[int, ...]] = set()
        for ids in lines:
            proper_prefixes.update(ids[:p] for p in range(1, len(ids)))
            if last_token_only:
                counts[ids] += 1
            else:
                counts.update(ids[: p + 1] for p in range(len(ids)))
        run = [ids for ids in dict.fromkeys(lines) if ids not in proper_prefixes]
        weights = tuple(tuple(counts.pop(ids[: p + 1], 0) for p in range(len(ids))) for ids in run)
        return cls(tuple(run), weights)


def encode_lines(tokenizer: PreTrainedTokenizerBase, lines: Sequence[str]) -> list[list[int]]:
    """Token ids of each line as prompts see them (behind BOS when the tokenizer adds one), in one batched call (the
    fast tokenizer's own, when it has one: transformers' per-line conversion costs more than the tokenizing)."""
    if not lines:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.padding is None and backend.truncation is None:  # else as __call__ sets them
        ids = [encoding.ids for encoding in backend.encode_batch(list(lines), add_special_tokens=False)]
    else:
        ids = [list(x) for x in tokenizer(list(lines), add_special_tokens=False)["input_ids"]]
    if starts_with_bos(tokenizer):
        ids = [[tokenizer.bos_token_id] + x for x in ids]
    return ids


class WeightedGram:
    """sum_i w_i k_i k_i^T over batches of keys, accumulated in a (d, d) float64 `total`.

    block: compute and accumulate only the blocks of `block` columns on and above the diagonal ((1 + d / block) / 2
    of the products of the whole), and mirror them below it once, in `result()` (the lower blocks then hold the same
    bits as if each batch's had been added there too); None: each batch's whole product."""

    def __init__(self, size: int, block: int | None, device: torch.device | str = "cpu") -> None:
        self.total = torch.zeros(size, size, dtype=torch.float64, device=device)
        self.block = block

    def add(self, keys: torch.Tensor, weights: torch.Tensor) -> None:
        """keys (n, d) float64, rows k_i; weights (n,)."""
        weighted = keys * weights[:, None]
        if self.block is None:
            self.total.add_(keys.T @ weighted)
            return
        for i in range(0, keys.shape[1], self.block):
            rows = slice(i, i + self.block)
            self.total[rows, i:] += keys[:, rows].T @ weighted[:, i:]  # this block row from the diagonal on

    def result(self) -> torch.Tensor:
        """The (d, d) sum (symmetric)."""
        if self.block is not None:
            for i in range(0, self.total.shape[0], self.block):
                rows = slice(i, i + self.block)
                self.total[i + self.block:, rows] = self.total[rows, i + self.block:].T
        return self.total


@torch.no_grad()
def compute_second_moment(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    lines: list[str],
    layer: int,
    batch_size: int = 512,
    progress: bool = True,
    last_token_only: bool = False,
    speed: SpeedPaths = FAST,
) -> tuple[torch.Tensor, int]:
    """(C (d_ff, d_ff) float64 on CPU, accumulated in float64, number of keys). Lines are grouped by token length: no
    padding. last_token_only: one key per line, at its last token (else every token). speed.share_prefixes: each
    distinct token prefix's key once, weighted (`KeyPlan.shared`); False: every key (`KeyPlan.plain`).
    speed.symmetric_product: C's blocks on and above its diagonal only (`WeightedGram`); False: the whole."""
    layout = ModelLayout.of(model)
    device = next(model.parameters()).device
    encoded = encode_lines(tokenizer, lines)
    plan = (KeyPlan.shared if speed.share_prefixes else KeyPlan.plain)(encoded, last_token_only)
    batches = batches_by_key([len(ids) for ids in plan.lines], batch_size)
    gram = None
    for batch in tqdm(batches, desc=f"key statistics, layer {layer}", unit="batch", disable=not progress):
        with Trace(layout.mlp_out(layer), retain_input=True, retain_output=False, stop=True) as trace:
            model(input_ids=torch.tensor([plan.lines[i] for i in batch], device=device), use_cache=False)
        weights = torch.tensor([plan.weights[i] for i in batch], dtype=torch.float64, device=device).reshape(-1)
        kept = weights.nonzero()[:, 0]
        # float64 (C's condition number reaches 1e8)
        keys = trace.input.reshape(-1, trace.input.shape[-1])[kept].to(torch.float64)
        if gram is None:
            gram = WeightedGram(keys.shape[1], SYMMETRIC_BLOCK if speed.symmetric_product else None, device)
        gram.add(keys, weights[kept])
    count = plan.num_keys
    if gram is None or count == 0:
        raise InputError("the statistics corpus has no tokens")
    total = gram.result()
    return (total / count).cpu(), count


def load_or_compute_second_moment(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus_path: str | Path,
    layer: int,
    n_samples: int,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    source: str = "corpus",
    split: FactSplit | None = None,
    speed: SpeedPaths = FAST,
) -> tuple[torch.Tensor, bool]:
    """(C, loaded_from_cache). Uses the first `n_samples` corpus lines or facts (all if n_samples <= 0); facts
    are those `split` allows (all without one)."""
    if source not in SOURCES:
        raise InputError(f"unknown mom2_source '{source}'; allowed: {', '.join(SOURCES)}")
    if source == "both":
        parts = [load_or_compute_second_moment(model, tokenizer, corpus_path, layer, n_samples, cache_dir,
                                               progress, part, split, speed) for part in ("corpus", "fact_prompts")]
        return (parts[0][0] + parts[1][0]) / 2, parts[0][1] and parts[1][1]
    corpus_path = require_corpus_file(corpus_path)
    key = stats_key(model, tokenizer, corpus_path, layer, n_samples, source, split)
    cache = statistics_cache(cache_dir)
    size = ModelLayout.of(model).key_size(layer)
    cached = cache.load(key, {"mom2": ((size, size), torch.float64)})
    if cached is not None:
        return cached["mom2"], True
    if source == "corpus":
        lines = [line.strip() for line in corpus_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        lines = [f.prompt() for f in statistics_facts(corpus_path, split)]
    if n_samples > 0:
        lines = lines[:n_samples]
    moment, count = compute_second_moment(model, tokenizer, lines, layer, progress=progress,
                                          last_token_only=source == "fact_prompts", speed=speed)
    if count < moment.shape[0]:
        remedy = "mom2_source 'corpus' or 'both' uses more keys" if source == "fact_prompts" else "a larger corpus helps"
        warnings.warn(f"key statistics from {count} {source} keys in {moment.shape[0]} dimensions are singular; "
                      f"solves fall back to least squares ({remedy})", stacklevel=2)
    cache.store(key, {"mom2": moment}, {
        "what": "key statistics C = E[k k^T]", "model": getattr(model.config, "_name_or_path", "") or "",
        "weights_sha256": weights_fingerprint(model)[:16], "layer": layer, "corpus": str(corpus_path),
        "source": source, "n_samples": n_samples, "num_keys": count,
        "split": split.to_dict() if split and source == "fact_prompts" else None})
    return moment, False
