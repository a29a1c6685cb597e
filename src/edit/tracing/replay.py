"""The restoration engine behind `CausalTracer` (`src.edit.causal_tracing` says what it computes and why it equals
the one-forward-per-restoration reference): one forward of every fact's clean and corrupted runs, then every
restoration replayed from its first changed block and token, many restorations per pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.model.block_call import BlockCall, RecordKeysValues, attention_takes_any_mask
from src.edit.model.hooks import RecordCall, Trace, TraceDict
from src.edit.model.layout import ModelLayout
from src.edit.prompts.encoding import EncodedPrompt, answer_token_id
from src.edit.tracing.results import KINDS, TraceRequest, TraceResult, window_layers


@dataclass
class TracedRuns:
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


class RestorationEngine:
    """Runs and replays for one model. suffix_replay: recompute only the tokens from the restored one on (False
    recomputes every token, as the original does); max_batch_tokens bounds one replay's rows x tokens."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, layout: ModelLayout,
                 device: torch.device, max_batch_tokens: int, suffix_replay: bool) -> None:
        self.model, self.tokenizer, self.layout, self.device = model, tokenizer, layout, device
        self.num_layers = layout.num_layers
        self.max_batch_tokens = max_batch_tokens
        self.suffix_replay = suffix_replay

    @torch.no_grad()
    def runs(self, requests: list[TraceRequest], prompts: list[EncodedPrompt],
             noises: list[tuple[torch.Tensor, float]]) -> TracedRuns:
        """One forward of F x (1 + N) rows: per fact, row 0 clean and rows 1..N with its noise (N, subject tokens,
        hidden) added to its subject's token embeddings; noises hold (noise, its std). Every prompt has the same
        length T."""
        layout, L, F, N = self.layout, self.num_layers, len(requests), noises[0][0].shape[0]
        T, d, rows = len(prompts[0].input_ids), layout.hidden_size, 1 + N

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
        call = BlockCall.from_record(layout.block(0), block_call, num_tokens=T, batch=F * rows)
        suffix = self.suffix_replay and call.supports_suffix and attention_takes_any_mask(self.model)
        recorded = keys_values.recorded if suffix else None
        return TracedRuns(
            requests=list(requests), prompts=list(prompts), answer_ids=answer_ids,
            high_scores=[float(p) for p in probabilities[:, 0]], low_scores=[float(p.mean()) for p in probabilities[:, 1:]],
            clean=clean, corrupted_inputs=[x[:, 1:] for x in inputs], call=call,
            keys_values=None if recorded is None else [tuple(x.view(F, rows, *x.shape[1:]) for x in kv) for kv in recorded],
            noise_stds=[std for _, std in noises], num_samples=N,
        )

    @torch.no_grad()
    def trace(self, group: TracedRuns, kinds: Sequence[str], window: int) -> list[dict[str, TraceResult]]:
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

    def _replay(self, group: TracedRuns, chunk: list["_Restoration"]) -> torch.Tensor:
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
