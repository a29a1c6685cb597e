"""C, the key statistics of one MLP layer that ROME's update is least-change under, and what an edit solves with it.

`KeyCovariance` holds, for one ROME: where C comes from (the statistics cache on the weights being edited, or a
private copy of the initial weights, read and factorised once per layer), the keys of earlier in-place edits added to
it (past_keys_weight), and the preconditioner an edit applies to its keys: C^-1, the null-space projector of C, or
the identity without statistics. The C last read for each layer is kept factorised while its cache key is the same
(`SpeedPaths.reuse_statistics`): edits from the same weights share one read and one factorisation.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.model.speedups import FAST, SpeedPaths
from src.edit.rank_one.hparams import ROMEHyperParams
from src.edit.rank_one.key_statistics import load_or_compute_second_moment, stats_key
from src.kg.corpus import require_corpus_file
from src.edit.rank_one.linalg import PSDSolver, null_space_projector, solve_psd
from src.kg.split import FactSplit
from src.utils.errors import InputError

Preconditioner = Callable[[torch.Tensor], torch.Tensor]  # (d_ff, ...) float64 -> (d_ff, ...) float64


class KeyCovariance:
    """C per layer for one ROME. corpus_path None or use_statistics False: C = I. split: the facts fact-prompt
    statistics may use (None: all). speed: how the statistics are computed (`SpeedPaths.share_prefixes`).

    statistics_from: "current" reads C for the weights an edit is made on (the cache is keyed by the weights);
    "initial" reads it once per layer for the weights `model` has now, kept in a private copy, for sequential
    in-place edits.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, corpus_path: Path | None,
                 hparams: ROMEHyperParams, use_statistics: bool = True, stats_dir: str | Path | None = None,
                 progress: bool = True, statistics_from: str = "current", split: FactSplit | None = None,
                 speed: SpeedPaths = FAST) -> None:
        if statistics_from not in ("current", "initial"):
            raise InputError(f"statistics_from must be current or initial, got '{statistics_from}'")
        self.tokenizer, self.corpus_path, self.hparams = tokenizer, corpus_path, hparams
        self.use_statistics = use_statistics and corpus_path is not None
        self.stats_dir, self.progress, self.split, self.speed = stats_dir, progress, split, speed
        self._initial_model = copy.deepcopy(model) if statistics_from == "initial" else None
        self._initial: dict[int, PSDSolver] = {}  # layer -> the initial weights' C, factorised
        self._current: dict[int, tuple[str, PSDSolver]] = {}  # layer -> (cache key, C factorised): the last C read
        self.past_keys: dict[int, list[torch.Tensor]] = {}  # layer -> k* of in-place edits (past_keys_weight > 0)

    def preconditioner(self, model: PreTrainedModel, layer: int, size: int) -> Preconditioner:
        """What u is made of at `layer` (keys of `size` dimensions): C^-1 x, or P x with null_space_threshold > 0
        (P projects on C's small-eigenvalue directions), or x itself without statistics."""
        moment = self._with_past_keys(self._moment(model, layer, size), layer, size)
        if moment is None:
            return lambda x: x.clone()
        if self.hparams.null_space_threshold > 0:
            projector = null_space_projector(moment, self.hparams.null_space_threshold)
            return lambda x: projector @ x
        kept = self._initial.get(layer) or (self._current[layer][1] if layer in self._current else None)
        if kept is not None and moment is kept.matrix:  # C's factorisation is kept while no past keys are added
            return kept.solve
        return lambda x: solve_psd(moment, x)

    def remember(self, layer: int, keys: torch.Tensor) -> None:
        """Add an in-place edit's keys (m, d_ff) to C at `layer` for later edits (past_keys_weight > 0)."""
        self.past_keys.setdefault(layer, []).extend(keys)

    def forget(self) -> None:
        self.past_keys.clear()

    def _moment(self, model: PreTrainedModel, layer: int, size: int) -> torch.Tensor | None:
        """C for `layer` (float64), or None without statistics."""
        if not self.use_statistics:
            return None
        if layer in self._initial:
            return self._initial[layer].matrix
        hp = self.hparams
        reuse = self._initial_model is None and self.speed.reuse_statistics
        if reuse:
            sources = ("corpus", "fact_prompts") if hp.mom2_source == "both" else (hp.mom2_source,)
            key = "|".join(stats_key(model, self.tokenizer, require_corpus_file(self.corpus_path), layer,
                                     hp.mom2_n_samples, source, self.split) for source in sources)
            if layer in self._current and self._current[layer][0] == key:
                return self._current[layer][1].matrix
        moment, _ = load_or_compute_second_moment(
            self._initial_model or model, self.tokenizer, self.corpus_path, layer, hp.mom2_n_samples,
            self.stats_dir, self.progress, hp.mom2_source, self.split, self.speed)
        if moment.shape != (size, size):
            raise InputError(f"key statistics have shape {tuple(moment.shape)}, expected {(size, size)}")
        if self._initial_model is not None:
            self._initial[layer] = PSDSolver(moment)
            return self._initial[layer].matrix
        if reuse:
            self._current[layer] = (key, PSDSolver(moment))
            return self._current[layer][1].matrix
        return moment

    def _with_past_keys(self, moment: torch.Tensor | None, layer: int, size: int) -> torch.Tensor | None:
        """C + past_keys_weight * sum_i k_i k_i^T over the remembered keys at `layer`, so that u = C^-1 k* is nearly
        orthogonal to them and a new edit leaves the earlier ones in place (C = I without statistics)."""
        past = self.past_keys.get(layer)
        if not past or self.hparams.past_keys_weight == 0:
            return moment
        keys = torch.stack(past).double()
        base = moment.double() if moment is not None else torch.eye(size, dtype=torch.float64)
        return base + self.hparams.past_keys_weight * keys.T @ keys
