"""Causal tracing (ROME section 2): which hidden states carry a fact?

The subject's token embeddings are corrupted with Gaussian noise; then, one (token, layer) at a time, a state of the
clean run is restored into the corrupted run and p(answer) at the last position is measured. The score of a restored
state minus the corrupted score (`low_score`) is its indirect effect.

This implementation gives the numbers of the original one-forward-per-restoration algorithm
(`src.edit.reference.plain_tracing`, equal within float32 rounding) with far fewer forwards:
- many restorations share one forward (rows = restorations x noise samples, chunked to bound memory), and
  `trace_many` puts several facts' restorations into the same forwards;
- tokens before the subject never see noise, so restoring them changes nothing: their score is `low_score`;
- the layers below the first restored one are identical for every restoration there, so they are computed once in
  the corrupted run and the forward restarts from that layer's recorded input;
- restoring token t changes no token before it, so only tokens t.. are recomputed (one pass over the blocks per
  first recomputed token), attending to the keys and values the corrupted run recorded for the others; restoring
  the subject's first token's block output makes every token up to it clean, so only the tokens after it are
  recomputed, over the clean run's keys and values (`src.edit.model.block_call`);
- GPT-2's "gelu_new" activation runs as torch's fused tanh-GELU kernel while tracing (same formula).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.model.block_call import BlockCall, RecordKeysValues
from src.edit.model.speedups import fused_activations
from src.edit.model.hooks import RecordCall, Trace, TraceDict
from src.edit.model.layout import ModelLayout
from src.edit.prompts.encoding import EncodedPrompt, answer_token_id, encode_fact_prompt
from src.edit.tracing.results import (EDIT_POSITIONS, KINDS, LocateResult, TraceRequest, TraceResult, default_window,
                                    normalize_kind, window_layers)
from src.utils.batching import batches_by_key
from src.utils.device import resolve_device
from src.utils.errors import InputError

__all__ = ["EDIT_POSITIONS", "FACTS_PER_FORWARD", "KINDS", "CausalTracer", "LocateResult", "TraceRequest",
           "TraceResult", "default_window", "normalize_kind", "window_layers"]

FACTS_PER_FORWARD = 8  # trace_many's default: 8 and 16 facts per forward measured alike (benchmarks/bench_tracing.py)


@dataclass
class _Group:
    """One forward of F facts x (1 clean + N corrupted) rows, all prompts of one length; shared by every kind and
    restoration of those facts."""

    requests: list[TraceRequest]
    prompts: list[EncodedPrompt]
    answer_ids: torch.Tensor  # (F,) long
    high_scores: list[float]
    low_scores: list[float]
    clean: dict[str, torch.Tensor]  # "hidden.l" / "mlp.l" / "attn.l" -> (F, T, d) clean outputs
    corrupted_inputs: list[torch.Tensor]  # block l input in the corrupted runs, (F, N, T, d); index L = final output
    call: BlockCall  # how the model called its blocks (mask, positions, ...), to call them again by hand
    # per block, the attention's keys and values (F, 1 + N, kv heads, T, head dim), row 0 clean; None: the family's
    # blocks cannot be called on a suffix of the tokens (see BlockCall.supports_suffix), every replay starts at token 0
    keys_values: list[tuple[torch.Tensor, torch.Tensor]] | None
    noise_stds: list[float]
    num_samples: int

    @property
    def num_tokens(self) -> int:
        return len(self.prompts[0].input_ids)


class CausalTracer:
    """Causal tracing for a causal LM and its tokenizer.

    Args:
        model, tokenizer: any supported family (see `src.edit.model.layout`); the model is moved to `device`.
        device: "auto" (CUDA if present, else CPU), "cpu", "cuda", "cuda:N".
        subjects: entity names whose token embeddings define sigma, the embedding std that `noise_level` multiplies
            (the original pools the embeddings of subject tokens); default: all non-special vocabulary tokens.
        noise_std: absolute sigma instead of computing it.
        max_batch_tokens: memory bound for one forward (rows x tokens).
        suffix_replay: recompute only the tokens from the restored one on (default); False recomputes every token,
            as the original does (same numbers up to float32 rounding; kept to test one against the other).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        device: str | torch.device = "auto",
        subjects: Sequence[str] | None = None,
        noise_std: float | None = None,
        max_batch_tokens: int = 1 << 16,
        suffix_replay: bool = True,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.layout = ModelLayout.of(model)
        layer_types = getattr(model.config, "layer_types", None)
        if layer_types and len(set(layer_types)) > 1:  # the replay calls every block with block 0's mask
            raise InputError("models whose layers use different attention types are not supported: "
                             f"{sorted(set(layer_types))}")
        self.max_batch_tokens = max_batch_tokens
        self.suffix_replay = suffix_replay
        self.embedding_std = float(noise_std) if noise_std is not None else self._embedding_std(subjects)

    @property
    def num_layers(self) -> int:
        return self.layout.num_layers

    def _embedding_std(self, subjects: Sequence[str] | None) -> float:
        weight = self.layout.embed.weight.detach()
        if subjects:
            ids = sorted({i for s in subjects for i in self.tokenizer(s, add_special_tokens=False)["input_ids"]})
        else:
            special = set(self.tokenizer.all_special_ids)
            ids = [i for i in range(weight.shape[0]) if i not in special]
        return float(weight[ids].float().std())

    # ------------------------------------------------------------------ public API

    def trace_important_states(
        self,
        s: str,
        r: str,
        o_target: str | None = None,
        noise_level: float = 3.0,
        num_samples: int = 10,
        kind: str | None = "hidden",
        window: int | None = None,
        noise: torch.Tensor | None = None,
        seed: int = 0,
        prefix: str = "",
    ) -> TraceResult:
        """Trace `"{s} {r}"` -> o_target (default: the model's own prediction) for one kind of state.

        kind: "hidden" (block outputs, None means hidden), "mlp" or "attn" (outputs of `window` layers around each
        layer restored together; window default `default_window(num_layers)`, 10 reproduces the original).
        noise: exact additive noise (num_samples, subject tokens, hidden size) instead of a seeded draw.
        prefix: context text before the prompt (e.g. another fact, `"E_417 R_02 E_077 ; "`).
        """
        kind = normalize_kind(kind)
        return self.trace_kinds(s, r, o_target, noise_level, num_samples, (kind,), window, noise, seed, prefix)[kind]

    def trace_kinds(
        self,
        s: str,
        r: str,
        o_target: str | None = None,
        noise_level: float = 3.0,
        num_samples: int = 10,
        kinds: Iterable[str | None] = KINDS,
        window: int | None = None,
        noise: torch.Tensor | None = None,
        seed: int = 0,
        prefix: str = "",
    ) -> dict[str, TraceResult]:
        """Several kinds from one clean and one corrupted run (same noise for all): {kind: TraceResult}."""
        request = TraceRequest(s, r, o_target, seed, noise, prefix)
        return self.trace_many([request], noise_level, num_samples, kinds, window)[0]

    def trace_many(
        self,
        requests: Sequence[TraceRequest],
        noise_level: float = 3.0,
        num_samples: int = 10,
        kinds: Iterable[str | None] = KINDS,
        window: int | None = None,
        facts_per_forward: int = FACTS_PER_FORWARD,
        progress: bool = False,
    ) -> list[dict[str, TraceResult]]:
        """`trace_kinds` for many facts: one {kind: TraceResult} per request, in order.

        Facts whose prompts have the same number of tokens are traced together, `facts_per_forward` at a time, so the
        fixed cost of a forward is shared; each keeps its own noise (its `noise` or a draw with its `seed`), and the
        results equal tracing the facts one by one up to float32 rounding.
        """
        kinds = [normalize_kind(k) for k in kinds]
        window = default_window(self.num_layers) if window is None else int(window)
        if window < 1:
            raise InputError(f"window must be >= 1, got {window}")
        if num_samples < 1:
            raise InputError(f"num_samples must be >= 1, got {num_samples}")
        if facts_per_forward < 1:
            raise InputError(f"facts_per_forward must be >= 1, got {facts_per_forward}")
        prompts = [encode_fact_prompt(self.tokenizer, q.s, q.r, q.prefix) for q in requests]
        batches = batches_by_key([len(p.input_ids) for p in prompts], facts_per_forward)
        results: list[dict[str, TraceResult] | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc="tracing", unit="fact", disable=not progress) as bar, \
                fused_activations(self.model):
            for batch in batches:
                group = self._runs([requests[i] for i in batch], [prompts[i] for i in batch], noise_level, num_samples)
                for index, traced in zip(batch, self._trace(group, kinds, window)):
                    results[index] = traced
                bar.update(len(batch))
        return results  # type: ignore[return-value]

    def locate(
        self,
        s: str,
        r: str,
        o_target: str | None = None,
        position: str = "last",
        noise_level: float = 3.0,
        num_samples: int = 10,
        window: int | None = None,
        noise: torch.Tensor | None = None,
        seed: int = 0,
    ) -> LocateResult:
        """The layer whose MLP, restored at `position`, has the largest indirect effect (ties: the lowest layer).

        position "last" (default) is where our KG models assemble the answer (see docs/method.md); "subject_last" is the
        original ROME's edit position.
        """
        trace = self.trace_important_states(s, r, o_target, noise_level, num_samples, "mlp", window, noise, seed)
        return LocateResult.from_trace(trace, position)

    def locate_important_layer(self, s: str, r: str, o_target: str | None = None, **kwargs) -> int:
        """`locate(...).layer`: the MLP layer to edit for this fact."""
        return self.locate(s, r, o_target, **kwargs).layer

    # ------------------------------------------------------------------ runs

    def _noise(self, noise: torch.Tensor | None, shape: tuple[int, int, int], noise_level: float, seed: int) -> tuple[torch.Tensor, float]:
        if noise is not None:
            if tuple(noise.shape) != shape:
                raise InputError(f"noise has shape {tuple(noise.shape)}; expected (num_samples, subject tokens, hidden) = {shape}")
            return noise.to(self.device, torch.float32), float(noise.float().std()) if noise.numel() > 1 else 0.0
        if noise_level <= 0:
            raise InputError(f"noise_level must be > 0, got {noise_level}")
        generator = torch.Generator().manual_seed(seed)
        std = noise_level * self.embedding_std
        return (torch.randn(shape, generator=generator) * std).to(self.device), std

    @torch.no_grad()
    def _runs(self, requests: list[TraceRequest], prompts: list[EncodedPrompt], noise_level: float,
              num_samples: int) -> _Group:
        """One forward of F x (1 + N) rows: per fact, row 0 clean and rows 1..N with noise on its subject's token
        embeddings. Every prompt has the same length T."""
        layout, L, F, N = self.layout, self.num_layers, len(requests), num_samples
        T, d, rows = len(prompts[0].input_ids), layout.hidden_size, 1 + num_samples
        noises = []
        for request, prompt in zip(requests, prompts):
            b, e = prompt.subject_range
            noises.append(self._noise(request.noise, (N, e - b, d), noise_level, request.seed))

        def corrupt(embeddings: torch.Tensor) -> torch.Tensor:
            embeddings = embeddings.clone()
            for f, ((added, _), prompt) in enumerate(zip(noises, prompts)):
                b, e = prompt.subject_range
                embeddings[f * rows + 1 : (f + 1) * rows, b:e] += added.to(embeddings.dtype)
            return embeddings

        input_ids = torch.tensor([p.input_ids for p in prompts for _ in range(rows)], device=self.device)
        modules = {f"{kind}.{l}": layout.sublayer(kind, l) for kind in KINDS for l in range(L)}
        with Trace(layout.embed, edit_output=corrupt, retain_output=False), TraceDict(modules) as traces, \
                Trace(layout.block(0), retain_input=True, retain_output=False) as first, \
                RecordCall(layout.block(0)) as block_call, \
                RecordKeysValues([layout.attn(l) for l in range(L)] if self.suffix_replay else []) as keys_values:
            logits = self.model(input_ids=input_ids, use_cache=False).logits[:, -1].float().view(F, rows, -1)
        answer_ids = torch.tensor([int(logits[f, 0].argmax()) if q.o_target is None else
                                   answer_token_id(self.tokenizer, q.o_target) for f, q in enumerate(requests)],
                                  device=self.device)
        probabilities = torch.softmax(logits, dim=-1).gather(2, answer_ids.view(F, 1, 1).expand(F, rows, 1))[..., 0]
        clean = {name: trace.output.view(F, rows, T, -1)[:, 0] for name, trace in traces.items()}
        inputs = [first.input.view(F, rows, T, d)] + [traces[f"hidden.{l}"].output.view(F, rows, T, d) for l in range(L)]
        call = BlockCall.bind(layout.block(0), _first_row(block_call.args[1:], F * rows),
                              _first_row(block_call.kwargs, F * rows), num_tokens=T)
        suffix = self.suffix_replay and call.supports_suffix and _attention_takes_any_mask(self.model)
        recorded = keys_values.recorded if suffix else None
        return _Group(
            requests=list(requests), prompts=list(prompts), answer_ids=answer_ids,
            high_scores=[float(p) for p in probabilities[:, 0]], low_scores=[float(p.mean()) for p in probabilities[:, 1:]],
            clean=clean, corrupted_inputs=[x[:, 1:] for x in inputs], call=call,
            keys_values=None if recorded is None else [tuple(x.view(F, rows, *x.shape[1:]) for x in kv) for kv in recorded],
            noise_stds=[std for _, std in noises], num_samples=N,
        )

    # ------------------------------------------------------------------ restorations

    @torch.no_grad()
    def _trace(self, group: _Group, kinds: Sequence[str], window: int) -> list[dict[str, TraceResult]]:
        T, L, N = group.num_tokens, self.num_layers, group.num_samples
        suffix = group.keys_values is not None
        scores = [{kind: np.full((T, L), low, dtype=np.float32) for kind in kinds} for low in group.low_scores]
        passes: dict[int, list[_Restoration]] = {}  # by the first token recomputed
        for fact, prompt in enumerate(group.prompts):
            b = prompt.subject_range[0]
            for kind in kinds:
                for l in range(L):
                    layers = range(l, l + 1) if kind == "hidden" else window_layers(l, window, L)
                    start = l + 1 if kind == "hidden" else layers.start
                    for t in range(b, T):
                        first, clean_prefix = _first_recomputed_token(kind, t, b, T) if suffix else (0, False)
                        item = _Restoration(fact, kind, t, l, layers, start, first, clean_prefix)
                        passes.setdefault(first, []).append(item)

        for first, restorations in sorted(passes.items()):
            restorations.sort(key=lambda x: x.start)
            per_chunk = max(1, self.max_batch_tokens // (T * N))  # rows hold T - first tokens and keys of first
            for i in range(0, len(restorations), per_chunk):
                chunk = restorations[i : i + per_chunk]
                for item, p in zip(chunk, self._replay(group, chunk).tolist()):
                    scores[item.fact][item.kind][item.token, item.layer] = p

        results = []
        for fact, (request, prompt) in enumerate(zip(group.requests, group.prompts)):
            tokens = tuple(self.tokenizer.convert_ids_to_tokens(list(prompt.input_ids)))
            answer_id = int(group.answer_ids[fact])
            traced = {}
            for kind in kinds:
                scores[fact][kind].setflags(write=False)
                traced[kind] = TraceResult(
                    subject=request.s, relation=request.r, prompt=prompt.text, scores=scores[fact][kind],
                    low_score=group.low_scores[fact], high_score=group.high_scores[fact], input_ids=prompt.input_ids,
                    input_tokens=tokens, subject_range=prompt.subject_range,
                    answer=self.tokenizer.convert_ids_to_tokens(answer_id), answer_id=answer_id, kind=kind,
                    window=1 if kind == "hidden" else window, noise_std=group.noise_stds[fact], num_samples=N,
                )
            results.append(traced)
        return results

    def _replay(self, group: _Group, chunk: list["_Restoration"]) -> torch.Tensor:
        """Mean p(answer) per restoration in `chunk` (sorted by start layer, one `first`), in one pass over the blocks.

        Restoration j owns rows j*N .. (j+1)*N - 1 holding tokens first..T-1. They join the batch at their start
        layer, from their fact's corrupted input to that block, so each block runs once on exactly the rows that
        need it; tokens before `first` enter through the keys and values their run computed (clean or corrupted).
        Restored states are written into the owning rows only.
        """
        N, L, device = group.num_samples, self.num_layers, self.device
        first = chunk[0].first
        samples = torch.arange(N, device=device)
        # where each row's keys and values of tokens < first come from: (fact, run), run 0 clean, 1..N corrupted
        prefix_facts = torch.tensor([item.fact for item in chunk], device=device).repeat_interleave(N)
        prefix_runs = torch.cat([samples * 0 if item.clean_prefix else samples + 1 for item in chunk])

        def rows_and_values(items: list[tuple[int, "_Restoration"]], name: str) -> tuple[tuple, torch.Tensor]:
            """Index (rows, columns) of every noise sample of the given restorations, and the clean `name` outputs."""
            index = torch.tensor([(j, item.token, item.fact) for j, item in items], device=device)
            rows = (index[:, :1] * N + samples).flatten()
            columns = (index[:, 1] - first).repeat_interleave(N)
            return (rows, columns), group.clean[name][index[:, 2], index[:, 1]].repeat_interleave(N, dim=0)

        restore_at: dict[tuple[int, str], list[tuple[int, _Restoration]]] = {}
        for j, item in enumerate(chunk):
            if item.kind == "hidden" and not item.clean_prefix:
                restore_at.setdefault((item.start, "hidden"), []).append((j, item))
            elif item.kind != "hidden":
                for layer in item.layers:
                    restore_at.setdefault((layer, item.kind), []).append((j, item))

        hidden: torch.Tensor | None = None
        facts = torch.tensor([item.fact for item in chunk], device=device)
        joined = 0
        for layer in range(chunk[0].start, L + 1):
            newcomers = sum(1 for item in chunk[joined:] if item.start == layer)
            if newcomers:
                fresh = group.corrupted_inputs[layer][facts[joined : joined + newcomers], :, first:].flatten(0, 1)
                hidden = fresh if hidden is None else torch.cat([hidden, fresh])
                joined += newcomers
                if (layer, "hidden") in restore_at:  # block `layer - 1`'s clean output at the restored token
                    index, values = rows_and_values(restore_at[layer, "hidden"], f"hidden.{layer - 1}")
                    hidden.index_put_(index, values.to(hidden.dtype))
            if layer == L:
                break
            edits = {kind: rows_and_values(restore_at[layer, kind], f"{kind}.{layer}")
                     for kind in ("mlp", "attn") if (layer, kind) in restore_at}

            def restore(kind: str, output: torch.Tensor) -> torch.Tensor:
                index, values = edits[kind]
                return output.index_put_(index, values.to(output.dtype))

            prefix = None
            if first > 0:
                rows = joined * N
                prefix = tuple(x[prefix_facts[:rows], prefix_runs[:rows], :, :first] for x in group.keys_values[layer])
            modules = {kind: self.layout.sublayer(kind, layer) for kind in edits}
            with TraceDict(modules, retain_output=False, edit_output=restore):
                hidden = group.call(self.layout.block(layer), hidden, first, prefix)
        logits = self.layout.unembed(self.layout.final_norm(hidden[:, -1])).float()
        answers = group.answer_ids[facts].repeat_interleave(N)
        probabilities = torch.softmax(logits, dim=-1).gather(1, answers[:, None])[:, 0]
        return probabilities.view(len(chunk), N).mean(dim=1).cpu()


def _attention_takes_any_mask(model: PreTrainedModel) -> bool:
    """Suffix replay passes an additive (or the recorded, sliced) 4-D mask: eager and sdpa attention take one; flash
    and flex attention expect other mask types, so they replay every token."""
    return getattr(model.config, "_attn_implementation", None) in ("eager", "sdpa")


def _first_recomputed_token(kind: str, token: int, subject_start: int, num_tokens: int) -> tuple[int, bool]:
    """(first token a restoration must recompute, whether the tokens before it are clean rather than corrupted).

    Restoring token t changes nothing before t, so t.. is recomputed over the corrupted run's keys and values. Tokens
    before the subject carry no noise, so restoring the subject's first token's block output makes it, and all
    tokens before it, clean from that block on: only the tokens after it are recomputed, over the clean run's."""
    if kind == "hidden" and token == subject_start and token + 1 < num_tokens:
        return token + 1, True
    return token, False


@dataclass(frozen=True)
class _Restoration:
    """Restore `kind` outputs of `layers` at `token` of fact `fact` (reported at `layer`); the forward restarts at
    block `start` and recomputes tokens `first`.. over the keys and values of the clean (`clean_prefix`) or the
    corrupted run."""

    fact: int
    kind: str
    token: int
    layer: int
    layers: range
    start: int
    first: int
    clean_prefix: bool


def _first_row(value, batch: int):
    """Keep row 0 of every tensor whose first dimension is the recorded batch (masks, rotary tables): all rows of a
    trace share the same tokens, and one row broadcasts over any number of restored rows."""
    if isinstance(value, torch.Tensor):  # 1-D tensors (cache positions) have no batch dimension
        return value[:1] if value.dim() >= 2 and value.shape[0] == batch else value
    if isinstance(value, tuple):
        return tuple(_first_row(v, batch) for v in value)
    if isinstance(value, list):
        return [_first_row(v, batch) for v in value]
    if isinstance(value, dict):
        return {k: _first_row(v, batch) for k, v in value.items()}
    return value
