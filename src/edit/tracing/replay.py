"""The restoration engine behind `CausalTracer` (`src.edit.causal_tracing` says what it computes and why it equals
the one-forward-per-restoration reference): one forward of every fact's clean and corrupted runs, then every
restoration replayed from its first changed block and token, many restorations per pass."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.model.block_call import BlockCall, RecordKeysValues, attention_takes_any_mask
from src.edit.model.hooks import RecordCall, Trace, TraceDict
from src.edit.model.layout import ModelLayout
from src.edit.prompts.encoding import EncodedPrompt
from src.edit.tracing.metrics import metric_scores, run_metrics
from src.edit.tracing.results import KINDS, TraceRequest, TraceResult, window_layers
from src.edit.tracing.rows import corrupt, trace_results


# The replay's cost model (`RestorationEngine._cost`), in token-rows of one block: calling a block costs as much as
# computing about this many token-rows (Python and hook overhead; measured on a 2-core CPU, the d_ff 2048 model).
# With merge_passes, passes that recompute fewer tokens are merged into one pass that recomputes more when that is
# estimated cheaper: same numbers, fewer block calls.
BLOCK_CALL_COST = 300


@dataclass
class TracedRuns:
    """One forward of F facts x (1 clean + N corrupted) rows, all prompts of one length; shared by every kind and
    restoration of those facts."""

    requests: list[TraceRequest]
    prompts: list[EncodedPrompt]
    answer_ids: torch.Tensor  # (F,) long
    metric: str  # "prob" or "logit_diff" (src.edit.tracing.metrics)
    contrast_ids: torch.Tensor | None  # (F,) long, the corrupted runs' answers logit_diff contrasts with; None for prob
    high_scores: list[float]  # the metric in the clean run
    low_scores: list[float]  # its mean over the corrupted runs
    kinds: tuple[str, ...]  # the kinds whose clean outputs `clean` holds
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


class RestorationEngine:
    """Runs and replays for one model. suffix_replay: recompute only the tokens from the restored one on (False
    recomputes every token, as the original does); share_restorations: restorations that have restored the same
    states so far share their rows (False: every restoration its own); merge_passes: one pass from the first subject
    token instead of one per first recomputed token when the cost model (block_call_cost) says it is cheaper (False:
    one pass per first token); max_batch_tokens bounds one replay's rows x tokens."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, layout: ModelLayout,
                 device: torch.device, max_batch_tokens: int, suffix_replay: bool,
                 share_restorations: bool = True, merge_passes: bool = True,
                 block_call_cost: int = BLOCK_CALL_COST) -> None:
        self.model, self.tokenizer, self.layout, self.device = model, tokenizer, layout, device
        self.num_layers = layout.num_layers
        self.max_batch_tokens = max_batch_tokens
        self.suffix_replay = suffix_replay
        self.share_restorations = share_restorations
        self.merge_passes, self.block_call_cost = merge_passes, block_call_cost

    @torch.no_grad()
    def runs(self, requests: list[TraceRequest], prompts: list[EncodedPrompt],
             noises: list[tuple[torch.Tensor, float]], metric: str = "prob",
             kinds: Sequence[str] = KINDS) -> TracedRuns:
        """One forward of F x (1 + N) rows: per fact, row 0 clean and rows 1..N with its noise (N, subject tokens,
        hidden) added to its subject's token embeddings; noises hold (noise, its std). Every prompt has the same
        length T. metric: what the scores measure (`src.edit.tracing.metrics`); kinds: the kinds `trace` may
        restore (the clean outputs recorded: block outputs always, MLP and attention outputs when asked for)."""
        layout, L, F, N = self.layout, self.num_layers, len(requests), noises[0][0].shape[0]
        T, d, rows = len(prompts[0].input_ids), layout.hidden_size, 1 + N

        input_ids = torch.tensor([p.input_ids for p in prompts for _ in range(rows)], device=self.device)
        recorded = ("hidden",) + tuple(kind for kind in KINDS if kind != "hidden" and kind in kinds)
        modules = {f"{kind}.{l}": layout.sublayer(kind, l) for kind in recorded for l in range(L)}
        with Trace(layout.embed, edit_output=lambda x: corrupt(x, noises, prompts), retain_output=False), TraceDict(modules) as traces, \
                Trace(layout.block(0), retain_input=True, retain_output=False) as first, \
                RecordCall(layout.block(0)) as block_call, \
                RecordKeysValues([layout.attn(l) for l in range(L)] if self.suffix_replay else []) as keys_values:
            logits = self.model(input_ids=input_ids, use_cache=False).logits[:, -1].float().view(F, rows, -1)
        answer_ids, contrast_ids, measured = run_metrics(self.tokenizer, requests, logits, metric)
        clean = {name: trace.output.view(F, rows, T, -1)[:, 0] for name, trace in traces.items()}
        inputs = [first.input.view(F, rows, T, d)] + [traces[f"hidden.{l}"].output.view(F, rows, T, d) for l in range(L)]
        call = BlockCall.from_record(layout.block(0), block_call, num_tokens=T, batch=F * rows)
        suffix = self.suffix_replay and call.supports_suffix and attention_takes_any_mask(self.model)
        recorded_keys_values = keys_values.recorded if suffix else None
        return TracedRuns(
            requests=list(requests), prompts=list(prompts), answer_ids=answer_ids, metric=metric,
            contrast_ids=contrast_ids, kinds=recorded,
            high_scores=[float(m) for m in measured[:, 0]], low_scores=[float(m.mean()) for m in measured[:, 1:]],
            clean=clean, corrupted_inputs=[x[:, 1:] for x in inputs], call=call,
            keys_values=None if recorded_keys_values is None else
            [tuple(x.view(F, rows, *x.shape[1:]) for x in kv) for kv in recorded_keys_values],
            noise_stds=[std for _, std in noises], num_samples=N,
        )

    @torch.no_grad()
    def trace(self, group: TracedRuns, kinds: Sequence[str], window: int) -> list[dict[str, TraceResult]]:
        missing = [kind for kind in kinds if kind not in group.kinds]
        if missing:
            raise ValueError(f"the runs recorded the clean outputs of {', '.join(group.kinds)}, not {missing[0]}")
        T, L, N = group.num_tokens, self.num_layers, group.num_samples
        suffix = group.keys_values is not None
        scores = [{kind: np.full((T, L), low, dtype=np.float32) for kind in kinds} for low in group.low_scores]
        merge = suffix and self.merge_passes
        suffix_passes: dict[int, list[_Restoration]] = {}  # by the first token recomputed
        one_pass: list[_Restoration] = []  # the same restorations, every token from the first subject token on
        first_subject = min(prompt.subject_range[0] for prompt in group.prompts) if suffix else 0
        for fact, prompt in enumerate(group.prompts):
            b = prompt.subject_range[0]
            for kind in kinds:
                for l in range(L):
                    layers = range(l, l + 1) if kind == "hidden" else window_layers(l, window, L)
                    start = l + 1 if kind == "hidden" else layers.start
                    for t in range(b, T):
                        first, clean_prefix = _first_recomputed_token(kind, t, b, T) if suffix else (0, False)
                        item = _Restoration(fact, kind, t, l, layers, start, first, clean_prefix)
                        suffix_passes.setdefault(first, []).append(item)
                        if merge:
                            one_pass.append(_Restoration(fact, kind, t, l, layers, start, first_subject, False))
        passes = suffix_passes
        if merge and len(suffix_passes) > 1 and \
                self._cost([one_pass], T, N) < self._cost(list(suffix_passes.values()), T, N):
            passes = {first_subject: one_pass}

        for first, restorations in sorted(passes.items()):
            restorations.sort(key=lambda x: x.node(L))  # restorations that share computation side by side
            per_chunk = max(1, self.max_batch_tokens // (T * N))  # rows hold T - first tokens and keys of first
            for i in range(0, len(restorations), per_chunk):
                chunk = restorations[i : i + per_chunk]
                for item, p in zip(chunk, self._replay(group, chunk).tolist()):
                    scores[item.fact][item.kind][item.token, item.layer] = p

        return trace_results(self.tokenizer, group.requests, group.prompts, scores, group.answer_ids,
                             group.contrast_ids, group.high_scores, group.low_scores, group.noise_stds, N, window,
                             group.metric, "exact")

    def _cost(self, passes: list[list["_Restoration"]], num_tokens: int, num_samples: int) -> int:
        """Estimated cost of replaying `passes` (each a list of restorations with one `first`), in token-rows: per
        block call, block_call_cost plus its rows (distinct nodes x noise samples) times the tokens they recompute."""
        cost = 0
        for items in passes:
            tokens = num_tokens - items[0].first
            for layer in range(min(item.start for item in items), self.num_layers):
                nodes = {self._node(item, layer, j) for j, item in enumerate(items) if item.start <= layer}
                cost += self.block_call_cost + len(nodes) * num_samples * tokens
        return cost

    def _node(self, item: "_Restoration", layer: int, index: int) -> tuple:
        """`item`'s node at block `layer`; without share_restorations each restoration (`index` in its pass) is its own."""
        return item.node(layer, None if self.share_restorations else index)

    def _replay(self, group: TracedRuns, chunk: list["_Restoration"]) -> torch.Tensor:
        """The mean metric (p(answer) or logit difference) per restoration in `chunk` (one `first`), in one pass over the blocks.

        At block l, restorations that have restored the same states so far (same fact, token and prefix, same
        restored (module, layer) pairs up to l) hold the same hidden state: they form one node of N rows (one per
        noise sample) holding tokens first..T-1, computed once (`share_restorations`; otherwise one node per
        restoration). A node joins at its first restored layer from its fact's corrupted input to that block; the
        blocks below equal the corrupted run. Tokens before `first` enter through the keys and values their run
        computed (clean or corrupted). Restored states are written into the owning node's rows only.
        """
        N, L, device = group.num_samples, self.num_layers, self.device
        first = chunk[0].first
        samples = torch.arange(N, device=device)
        position: dict[tuple, int] = {}  # node after the previous block -> its place in `hidden` (N rows each)
        hidden = torch.empty(0, device=device)
        nodes: list[tuple] = []
        for layer in range(min(item.start for item in chunk), L + 1):
            owner: dict[tuple, _Restoration] = {}  # node -> its first restoration (fact, token, prefix, start)
            parent: dict[tuple, int | None] = {}  # node -> its parent's place, None: it joins here
            for j, item in enumerate(chunk):
                if item.start <= layer:
                    node = self._node(item, layer, j)
                    if node not in owner:
                        owner[node] = item
                        parent[node] = position[self._node(item, layer - 1, j)] if item.start < layer else None
            # continuing nodes in their parents' order, then those that join: no copy while no node splits
            nodes = sorted(owner, key=lambda n: (parent[n] is None, parent[n] or 0))
            places = [parent[n] for n in nodes if parent[n] is not None]
            fresh = [group.corrupted_inputs[layer][owner[n].fact, :, first:] for n in nodes if parent[n] is None]
            kept = [] if not places else [hidden if places == list(range(len(position))) else
                                          hidden.view(len(position), N, *hidden.shape[1:])[places].flatten(0, 1)]
            hidden = torch.cat(kept + fresh) if fresh else kept[0]  # (nodes x N, T - first, d)
            position = {node: n for n, node in enumerate(nodes)}

            def writes(kind: str, at_layer: int) -> tuple[tuple, torch.Tensor] | None:
                """Index (rows, columns) and values that restore the clean `kind` output of `at_layer` (block
                `at_layer - 1`'s output for "hidden") in every node that restores it here."""
                index = [(n, owner[node].token, owner[node].fact) for n, node in enumerate(nodes)
                         if (kind, at_layer) in owner[node].events]
                if not index:
                    return None
                index = torch.tensor(index, device=device)
                rows = (index[:, :1] * N + samples).flatten()
                columns = (index[:, 1] - first).repeat_interleave(N)
                name = f"hidden.{at_layer - 1}" if kind == "hidden" else f"{kind}.{at_layer}"
                return (rows, columns), group.clean[name][index[:, 2], index[:, 1]].repeat_interleave(N, dim=0)

            entering = writes("hidden", layer)
            if entering is not None:  # block `layer - 1`'s clean output at the restored token
                hidden.index_put_(entering[0], entering[1].to(hidden.dtype))
            if layer == L:
                break
            edits = {kind: w for kind in ("mlp", "attn") if (w := writes(kind, layer)) is not None}

            def restore(kind: str, output: torch.Tensor) -> torch.Tensor:
                index, values = edits[kind]
                return output.index_put_(index, values.to(output.dtype))

            prefix = None
            if first > 0:
                facts = torch.tensor([owner[node].fact for node in nodes], device=device).repeat_interleave(N)
                runs = torch.cat([samples * 0 if owner[node].clean_prefix else samples + 1 for node in nodes])
                prefix = tuple(x[facts, runs, :, :first] for x in group.keys_values[layer])
            modules = {kind: self.layout.sublayer(kind, layer) for kind in edits}
            with TraceDict(modules, retain_output=False, edit_output=restore):
                hidden = group.call(self.layout.block(layer), hidden, first, prefix)
        logits = self.layout.unembed(self.layout.final_norm(hidden[:, -1])).float()
        facts = torch.tensor([owner[node].fact for node in nodes], device=device).repeat_interleave(N)
        contrasts = None if group.contrast_ids is None else group.contrast_ids[facts]
        measured = metric_scores(logits, group.answer_ids[facts], contrasts, group.metric).view(len(nodes), N).mean(1)
        return measured[[position[self._node(item, L, j)] for j, item in enumerate(chunk)]].cpu()


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

    @cached_property
    def events(self) -> tuple[tuple[str, int], ...]:
        """The states written, as (kind, block): ("hidden", l + 1) writes block l's output as block l + 1's input
        (none when the clean prefix carries it); ("mlp" | "attn", l) writes that sublayer's output in block l."""
        if self.kind == "hidden":
            return () if self.clean_prefix else (("hidden", self.start),)
        return tuple((self.kind, l) for l in self.layers)

    def node(self, layer: int, own: int | None = None) -> tuple:
        """Which node this restoration's rows are in at block `layer` (what it has written up to it): equal nodes
        hold equal states. own: a number that keeps this restoration's node its own (no sharing)."""
        return (self.fact, self.token, self.clean_prefix, self.start, tuple(e for e in self.events if e[1] <= layer),
                own)

