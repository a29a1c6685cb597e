"""MEMIT (Meng et al. 2023, "Mass-Editing Memory in a Transformer"): many facts at once, spread over several MLPs.

For requests i = 1..n and layers R = {l_1 < ... < l_k} (default: every layer), L = l_k:
  1. z_i = h_L,i + delta_i: the target residual (block L's output at the edit position of the bare prompt). delta_i is
     optimised (Adam) so that adding it at the edit position of every rewrite prompt makes the target top-1, with a
     KL term on the subject's other facts, a weight decay and a clamp at clamp_norm_factor * |h_L,i|. Requests are
     optimised together in chunks; each stops on its own once every rewrite prompt has its target top-1 with mean
     p >= v_stop_prob.
  2. For each l in R, in order, with the weights as edited so far: keys K (d_ff, n) = weighted mean MLP keys over each
     request's rewrite prompts; residual R = (z - h_L(current)) / (layers left); C = E[k k^T] over the KG corpus on
     the original weights;
        dW_l = R K^T (lambda C + K K^T + mu K_p K_p^T)^-1     (lambda = mom2_update_weight; solve in float64)
     K_p: the keys of this editor's earlier calls (sequential use), mu = past_keys_weight (0: off), so that a new
     batch leaves the earlier edits in place.
  The edit position is the last token, as ROME's default here (our models assemble facts there: docs/method.md).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.evaluation.requests import EditRequest
from src.edit.model.hooks import Trace
from src.edit.methods.base import EditEnvironment, MethodOutput, PromptEditor, RequestInfo
from src.edit.rank_one.linalg import solve_psd
from src.edit.model.layout import ModelLayout, apply_update
from src.edit.prompts.batch import PromptBatch
from src.edit.model.resumed_forward import ResumedForward
from src.edit.rank_one.keys import mlp_keys
from src.edit.prompts.rewrite import RewriteSet, last_positions
from src.edit.rank_one.hparams import MOM2_SOURCES
from src.edit.rank_one.key_statistics import load_or_compute_second_moment
from src.utils.config import load_dataclass
from src.utils.errors import InputError


@dataclass(frozen=True)
class MEMITHyperParams:
    """Documented in configs/memit_gpt_small.yaml."""

    layers: tuple[int, ...] | None = None
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    v_lr: float = 0.5
    v_num_grad_steps: int = 100
    v_weight_decay: float = 0.001
    v_stop_prob: float = 0.95
    num_context_prefixes: int = 10
    bare_prompt_weight: float = 0.5
    mom2_update_weight: float = 200.0
    mom2_n_samples: int = 0
    mom2_source: str = "corpus"
    z_batch_size: int = 64
    past_keys_weight: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(l) for l in self.layers))
            if not self.layers or list(self.layers) != sorted(set(self.layers)):
                raise InputError(f"layers must be a non-empty increasing list or null, got {list(self.layers)}")
        if self.mom2_update_weight < 0:
            raise InputError(f"mom2_update_weight must be >= 0, got {self.mom2_update_weight}")
        if self.mom2_source not in MOM2_SOURCES:
            raise InputError(f"mom2_source must be one of {', '.join(MOM2_SOURCES)}, got '{self.mom2_source}'")
        if self.past_keys_weight < 0:
            raise InputError(f"past_keys_weight must be >= 0, got {self.past_keys_weight}")
        if self.z_batch_size < 1:
            raise InputError(f"z_batch_size must be >= 1, got {self.z_batch_size}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layers"] = None if self.layers is None else list(self.layers)
        return data


def load_memit_hparams(source: Mapping[str, Any] | str | Path | MEMITHyperParams | None) -> MEMITHyperParams:
    return load_dataclass(MEMITHyperParams, source)


class MEMITEditor(PromptEditor):
    name = "memit"
    batched = True

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, hparams: MEMITHyperParams,
                 env: EditEnvironment) -> None:
        super().__init__(model, tokenizer, hparams, env)
        self.layers = hparams.layers if hparams.layers is not None else tuple(range(self.layout.num_layers))
        for layer in self.layers:
            self.layout.check_layer(layer)
        # C on the weights as given, so that a sequence of in-place batches reuses one C per layer.
        self._statistics_model = copy.deepcopy(model) if env.corpus_path is not None else None
        self._past_keys: dict[int, list[torch.Tensor]] = {}  # layer -> keys of earlier calls (past_keys_weight > 0)

    def forget(self) -> None:
        """Drop the keys of earlier edits (the caller restored the weights they changed)."""
        self._past_keys.clear()

    def edit(self, requests: Sequence[EditRequest]) -> MethodOutput:
        hp = self.hparams
        sets, targets = self.prepare(requests)
        z_list, steps = [], []
        chunks = range(0, len(sets), hp.z_batch_size)
        quiet = not self.env.progress or len(chunks) < 2
        for start in tqdm(chunks, desc="memit: target residuals", unit="chunk", disable=quiet):
            z, s = self._target_residuals(sets[start : start + hp.z_batch_size], targets[start : start + hp.z_batch_size])
            z_list.append(z)
            steps.extend(s)
        z = torch.cat(z_list)  # (n, d) float64 on CPU
        changed = []
        for index, layer in enumerate(self.layers):
            keys = self._request_keys(sets, layer)  # (n, d_ff) float64
            residual = (z - self._residuals_now(sets)) / (len(self.layers) - index)
            update = self._layer_update(layer, keys, residual)
            apply_update(self.layout.mlp_out(layer), update)
            if hp.past_keys_weight > 0:
                self._past_keys.setdefault(layer, []).append(keys)
            changed.append(self.layout.paths.mlp_out.format(layer) + ".weight")
        infos = tuple(RequestInfo(layers=self.layers, context_facts=tuple(f.sentence() for f in s.context_facts),
                                  kl_facts=tuple(f.sentence() for f in s.kl_facts) if hp.kl_factor > 0 else (),
                                  steps=n)
                      for s, n in zip(sets, steps))
        return MethodOutput(infos=infos, changed=tuple(changed))

    # ------------------------------------------------------------------ steps

    def _z_module(self) -> torch.nn.Module:
        return self.layout.block(self.layers[-1])

    @torch.no_grad()
    def _residuals_now(self, sets: list[RewriteSet]) -> torch.Tensor:
        """(n, d) float64: block L's output at the last token of each bare prompt, current weights."""
        prompts = [s.rewrite[0] for s in sets]
        batch = PromptBatch.for_tokenizer([p.input_ids for p in prompts], self.tokenizer, self.env.device)
        with Trace(self._z_module(), stop=True) as trace:
            batch.forward(self.model)
        return trace.output[torch.arange(len(prompts)), batch.last].double().cpu()

    def _request_keys(self, sets: list[RewriteSet], layer: int) -> torch.Tensor:
        """(n, d_ff) float64: per request, the weighted mean key over its rewrite prompts."""
        prompts = [p for s in sets for p in s.rewrite]
        keys = mlp_keys(self.model, self.tokenizer, prompts, last_positions(prompts), layer,
                        speed=self.env.speed).double().cpu()
        out, start = [], 0
        for s in sets:
            weights = torch.tensor(s.weights, dtype=torch.float64)
            out.append(weights @ keys[start : start + len(s.rewrite)])
            start += len(s.rewrite)
        return torch.stack(out)

    def _layer_update(self, layer: int, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """(d_model, d_ff) float64: residual^T-weighted least squares with the covariance prior."""
        hp = self.hparams
        d_ff = keys.shape[1]
        if self._statistics_model is not None:
            moment, _ = load_or_compute_second_moment(self._statistics_model, self.tokenizer, self.env.corpus_path, layer,
                                                      hp.mom2_n_samples, self.env.stats_dir,
                                                      self.env.progress, hp.mom2_source, self.env.split,
                                                      self.env.speed)
            moment = moment.double()
        else:
            moment = torch.eye(d_ff, dtype=torch.float64)
        system = hp.mom2_update_weight * moment + keys.T @ keys  # (d_ff, d_ff)
        if hp.past_keys_weight > 0 and self._past_keys.get(layer):
            past = torch.cat(self._past_keys[layer])
            system = system + hp.past_keys_weight * past.T @ past
        adjusted = solve_psd(system, keys.T)  # (d_ff, n)
        return residual.T @ adjusted.T

    def _target_residuals(self, sets: list[RewriteSet], target_ids: list[int]) -> tuple[torch.Tensor, list[int]]:
        """z (n, d) float64 and the steps each request took, for one chunk of requests."""
        hp, device = self.hparams, self.env.device
        n = len(sets)
        rewrite = [p for s in sets for p in s.rewrite]
        kl = [p for s in sets for p in s.kl]
        owner_rw = torch.tensor([i for i, s in enumerate(sets) for _ in s.rewrite], device=device)
        owner_kl = torch.tensor([i for i, s in enumerate(sets) for _ in s.kl], device=device, dtype=torch.long)
        owner = torch.cat([owner_rw, owner_kl])
        weights = torch.tensor([w for s in sets for w in s.weights], device=device)
        targets = torch.tensor(target_ids, device=device)[owner_rw]
        batch = PromptBatch.for_tokenizer([p.input_ids for p in rewrite + kl], self.tokenizer, device)
        n_rw = len(rewrite)

        speed = self.env.speed
        with speed.fused(self.model):
            readout = LastTokenReadout(self.model, self.layout, self.layers[-1], batch, speed.resume_forward,
                                       speed.pack_prompts)
        logits_init = readout.initial_logits
        bare_rows = torch.tensor([0] + [len(s.rewrite) for s in sets[:-1]], device=device).cumsum(0)
        h_bare = readout.last_hidden[bare_rows].float()  # (n, d)
        kl_init = torch.log_softmax(logits_init[n_rw:], dim=-1)
        max_norm = hp.clamp_norm_factor * h_bare.norm(dim=-1)  # (n,)
        kl_counts = torch.bincount(owner_kl, minlength=n).clamp(min=1).float() if len(kl) else None

        delta = torch.zeros_like(h_bare, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=hp.v_lr)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        steps = torch.zeros(n, dtype=torch.long)
        with speed.frozen(self.model), speed.fused(self.model):
            for _ in range(hp.v_num_grad_steps):
                # index_select, not delta[owner]: the indexing's backward (index_put_ accumulating repeated indices)
                # sums in an order that varies from run to run on more than one CPU thread; index_add_ does not
                log_probs = torch.log_softmax(readout(delta.index_select(0, owner)), dim=-1)
                target_lp = log_probs[:n_rw].gather(1, targets[:, None])[:, 0]
                with torch.no_grad():
                    hit = (log_probs[:n_rw].argmax(-1) == targets).float()
                    all_hit = torch.zeros(n, device=device).index_add_(0, owner_rw, 1 - hit) == 0
                    mean_p = torch.zeros(n, device=device).index_add_(0, owner_rw, target_lp.exp() * weights)
                    done |= all_hit & (mean_p >= hp.v_stop_prob)
                if bool(done.all()):
                    break
                nll = -torch.zeros(n, device=device).index_add(0, owner_rw, weights * target_lp)
                loss = nll.sum()
                if kl_counts is not None:
                    kl_rows = F.kl_div(log_probs[n_rw:], kl_init, log_target=True, reduction="none").sum(-1)
                    loss = loss + hp.kl_factor * (torch.zeros(n, device=device).index_add(0, owner_kl, kl_rows) / kl_counts).sum()
                loss = loss + hp.v_weight_decay * ((delta.norm(dim=-1) / h_bare.norm(dim=-1)) ** 2).sum()
                before = delta.detach().clone()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    norms = delta.norm(dim=-1)
                    scale = torch.where(norms > max_norm, max_norm / norms, torch.ones_like(norms))
                    delta.mul_(scale[:, None])
                    delta[done] = before[done]
                steps += (~done).long().cpu()
        return (h_bare.double() + delta.detach().double()).cpu(), steps.tolist()


class LastTokenReadout:
    """Logits at each row's last token of `batch` when a vector is added to block `layer`'s output at that token.

    A `ResumedForward` from block `layer`: the model runs once here (`initial_logits`; `last_hidden`, block `layer`'s
    output at each row's last token), and each call runs only the blocks above `layer`, the final norm and the
    unembedding. For MEMIT's default z layer, the last block, that is the final norm and the unembedding alone.
    resume=False runs the whole model per call (the plain path); pack: the blocks above run on the prompts packed
    (`ResumedForward`)."""

    def __init__(self, model: PreTrainedModel, layout: ModelLayout, layer: int, batch: PromptBatch,
                 resume: bool = True, pack: bool = True) -> None:
        rows = torch.arange(len(batch.last), device=batch.last.device)
        self._resumed = ResumedForward(model, layer, batch, rows, batch.last, resume=resume, pack=pack)
        self.initial_logits = self._resumed.initial_logits  # (rows, vocab) float32
        self.last_hidden = self._resumed.start[rows, batch.last]  # (rows, d), the model's dtype

    @property
    def direct(self) -> bool:
        """True when nothing but the final norm and the unembedding runs per call (`layer` is the last block)."""
        return not self._resumed.blocks

    def __call__(self, added: torch.Tensor) -> torch.Tensor:
        """added (rows, d) -> logits (rows, vocab) float32."""
        resumed = self._resumed
        return resumed(resumed.placed(resumed.read_rows, resumed.read_columns, added))


def make_memit(model, tokenizer, hparams, env: EditEnvironment) -> MEMITEditor:
    return MEMITEditor(model, tokenizer, load_memit_hparams(hparams), env)
