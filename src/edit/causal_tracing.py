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
  the corrupted run and the forward restarts from that layer's recorded input; likewise restorations that have
  restored the same states up to a block (windows that differ only above it, equal windows clipped at the last
  layer) share every block up to there;
- restoring token t changes no token before it, so only tokens t.. are recomputed (one pass over the blocks per
  first recomputed token, or one pass from the first subject token where a cost model says the saved block calls
  outweigh the extra tokens), attending to the keys and values the corrupted run recorded for the others; restoring
  the subject's first token's block output makes every token up to it clean, so only the tokens after it are
  recomputed, over the clean run's keys and values (`src.edit.model.block_call`; the engine: `src.edit.tracing.replay`);
- GPT-2's "gelu_new" activation runs as torch's fused tanh-GELU kernel while tracing (same formula).

Beside the original: corruption "replace" (another subject's tokens instead of noise), metric "logit_diff"
(`src.edit.tracing.metrics`), method "attribution" (every cell to first order from one forward and one backward,
`src.edit.tracing.attribution`) and attention knockout (`knockout`, `src.edit.tracing.knockout`).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.model.block_call import attention_takes_any_mask
from src.edit.model.layout import ModelLayout
from src.edit.model.speedups import FAST, SpeedPaths
from src.edit.prompts.encoding import EncodedPrompt, answer_token_id, check_known_words, encode_fact_prompt
from src.edit.tracing.attribution import attribution_traces
from src.edit.tracing.knockout import knockout_traces
from src.edit.tracing.metrics import METRICS, check_metric
from src.edit.tracing.replay import RestorationEngine
from src.edit.tracing.results import (CORRUPTIONS, EDIT_POSITIONS, KINDS, KNOCKOUT_TARGETS, METHODS, KnockoutResult,
                                      LocateResult, TraceRequest, TraceResult, check_method, default_window,
                                      normalize_kind, window_layers)
from src.utils.batching import batches_by_key
from src.utils.device import resolve_device
from src.utils.errors import InputError

__all__ = ["CORRUPTIONS", "EDIT_POSITIONS", "FACTS_PER_FORWARD", "KINDS", "KNOCKOUT_TARGETS", "METHODS", "METRICS",
           "CausalTracer", "KnockoutResult", "LocateResult", "TraceRequest", "TraceResult", "default_window",
           "normalize_kind", "window_layers"]

FACTS_PER_FORWARD = 8  # trace_many's default: 8 and 16 facts per forward measured alike (benchmarks/bench_tracing.py)


class CausalTracer:
    """Causal tracing for a causal LM and its tokenizer.

    Args:
        model, tokenizer: any supported family (see `src.edit.model.layout`); the model is moved to `device`.
        device: "auto" (CUDA if present, else CPU), "cpu", "cuda", "cuda:N".
        subjects: entity names whose token embeddings define sigma, the embedding std that `noise_level` multiplies
            (the original pools the embeddings of subject tokens), and among which corruption "replace" draws a
            replacement; default: all non-special vocabulary tokens (and no draws).
        max_batch_tokens: memory bound for one forward (rows x tokens).
        suffix_replay: recompute only the tokens from the restored one on (default); False recomputes every token,
            as the original does (same numbers up to float32 rounding; kept to test one against the other).
        speed: `SpeedPaths` (its fuse_gelu: GPT-2's gelu_new as one fused kernel while tracing).
        share_restorations: restorations that have restored the same states up to a block (e.g. windows that
            differ only above it, or equal windows clipped at the last layer) share that block's computation
            (default); False computes each apart (same numbers; kept to test one against the other).
        merge_passes: with suffix_replay, one pass from the first subject token instead of one pass per first token
            recomputed, where a cost model of block calls and token-rows says it is cheaper (default); False: one
            pass per first token (same numbers).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        device: str | torch.device = "auto",
        subjects: Sequence[str] | None = None,
        max_batch_tokens: int = 1 << 16,
        suffix_replay: bool = True,
        speed: SpeedPaths = FAST,
        share_restorations: bool = True,
        merge_passes: bool = True,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.layout = ModelLayout.of(model)
        self.speed = speed
        layer_types = getattr(model.config, "layer_types", None)
        if layer_types and len(set(layer_types)) > 1:  # the replay calls every block with block 0's mask
            raise InputError("models whose layers use different attention types are not supported: "
                             f"{sorted(set(layer_types))}")
        self.engine = RestorationEngine(self.model, tokenizer, self.layout, self.device, max_batch_tokens, suffix_replay,
                                        share_restorations, merge_passes)
        self.subjects = tuple(subjects) if subjects else ()
        self.embedding_std = self._embedding_std(self.subjects)
        self._subject_sizes: dict[str, int] | None = None

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
        corruption: str = "gaussian",
        replacement: str | None = None,
        metric: str = "prob",
        method: str = "exact",
    ) -> TraceResult:
        """Trace `"{s} {r}"` -> o_target (default: the model's own prediction) for one kind of state.

        kind: "hidden" (block outputs, None means hidden), "mlp" or "attn" (outputs of `window` layers around each
        layer restored together; window default `default_window(num_layers)`, 10 reproduces the original).
        noise: exact additive noise (num_samples, subject tokens, hidden size) instead of a seeded draw.
        prefix: context text before the prompt (e.g. another fact, `"E_417 R_02 E_077 ; "`).
        corruption: "gaussian" (noise on the subject's token embeddings, the original) or "replace" (symmetric token
            replacement: the subject's tokens replaced by those of `replacement`, an entity with as many tokens, or
            by one drawn with `seed` among `subjects` that changes the model's answer; one corrupted run, no noise
            samples).
        metric: "prob" (p(answer), the original) or "logit_diff" (logit of the answer minus that of the corrupted
            runs' answer, `TraceResult.contrast`).
        method: "exact" (every state restored, the original) or "attribution" (every cell estimated to first order
            from one forward and one backward: attribution patching, `src.edit.tracing.attribution`).
        """
        kind = normalize_kind(kind)
        return self.trace_kinds(s, r, o_target, noise_level, num_samples, (kind,), window, noise, seed, prefix,
                                corruption, replacement, metric, method)[kind]

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
        corruption: str = "gaussian",
        replacement: str | None = None,
        metric: str = "prob",
        method: str = "exact",
    ) -> dict[str, TraceResult]:
        """Several kinds from one clean and one corrupted run (same noise for all): {kind: TraceResult}."""
        request = TraceRequest(s, r, o_target, seed, noise, prefix, replacement)
        return self.trace_many([request], noise_level, num_samples, kinds, window, corruption=corruption,
                               metric=metric, method=method)[0]

    def trace_many(
        self,
        requests: Sequence[TraceRequest],
        noise_level: float = 3.0,
        num_samples: int = 10,
        kinds: Iterable[str | None] = KINDS,
        window: int | None = None,
        facts_per_forward: int = FACTS_PER_FORWARD,
        progress: bool = False,
        corruption: str = "gaussian",
        metric: str = "prob",
        method: str = "exact",
        knockout: bool = False,
    ) -> list[dict[str, TraceResult | KnockoutResult]]:
        """`trace_kinds` for many facts: one {kind: TraceResult} per request, in order; knockout: each dict also holds
        the fact's attention knockout under "knockout" (`knockout_many`, same window).

        Facts whose prompts have the same number of tokens are traced together, `facts_per_forward` at a time, so the
        fixed cost of a forward is shared; each keeps its own noise (its `noise` or a draw with its `seed`; with
        corruption "replace", its replacement), and the results equal tracing the facts one by one up to float32
        rounding.
        """
        if corruption not in CORRUPTIONS:
            raise InputError(f"unknown corruption '{corruption}'; allowed: {', '.join(CORRUPTIONS)}")
        check_metric(metric)
        check_method(method)
        for q in requests:
            if corruption == "replace" and q.noise is not None:
                raise InputError(f"noise is given for '{q.s} {q.r}' but corruption replace adds none; drop it or use "
                                 "corruption gaussian")
            if corruption == "gaussian" and q.replacement is not None:
                raise InputError(f"replacement '{q.replacement}' is given but corruption is gaussian; use corruption "
                                 "replace")
        kinds = [normalize_kind(k) for k in kinds]
        window = self._checked_window(window, facts_per_forward)
        if num_samples < 1:
            raise InputError(f"num_samples must be >= 1, got {num_samples}")
        prompts = [encode_fact_prompt(self.tokenizer, q.s, q.r, q.prefix) for q in requests]
        batches = batches_by_key([len(p.input_ids) for p in prompts], facts_per_forward)
        results: list[dict[str, TraceResult] | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc="tracing", unit="fact", disable=not progress) as bar, \
                self.speed.fused(self.model):
            for batch in batches:
                if corruption == "replace":
                    replaced = [self._replacement(requests[i], prompts[i]) for i in batch]
                    noises = [(difference, std) for difference, std, _ in replaced]
                else:
                    noises = [self._noise(requests[i].noise, prompts[i].subject_range, num_samples, noise_level,
                                          requests[i].seed) for i in batch]
                chosen, encoded = [requests[i] for i in batch], [prompts[i] for i in batch]
                if method == "attribution":
                    traced_batch = attribution_traces(self.model, self.tokenizer, self.layout, self.device, chosen,
                                                      encoded, noises, kinds, window, metric)
                else:
                    traced_batch = self.engine.trace(self.engine.runs(chosen, encoded, noises, metric, kinds), kinds,
                                                     window)
                for k, (index, traced) in enumerate(zip(batch, traced_batch)):
                    if corruption == "replace":
                        traced = {kind: dataclasses.replace(t, corruption=corruption, replacement=replaced[k][2])
                                  for kind, t in traced.items()}
                    results[index] = traced
                bar.update(len(batch))
        if knockout:
            for traced, knocked in zip(results, self.knockout_many(requests, window, facts_per_forward)):
                traced["knockout"] = knocked
        return results  # type: ignore[return-value]

    def knockout(self, s: str, r: str, o_target: str | None = None, window: int | None = None,
                 prefix: str = "") -> KnockoutResult:
        """Attention knockout for `"{prefix}{s} {r}"` -> o_target (default: the model's prediction): p(answer) with
        the attention from the last token to the subject's positions, and apart to the relation's, blocked in the
        `window` layers around each layer (default `default_window(num_layers)`); no corruption."""
        return self.knockout_many([TraceRequest(s, r, o_target, prefix=prefix)], window)[0]

    def knockout_many(self, requests: Sequence[TraceRequest], window: int | None = None,
                      facts_per_forward: int = FACTS_PER_FORWARD, progress: bool = False) -> list[KnockoutResult]:
        """`knockout` for many facts, in order; prompts of one length `facts_per_forward` at a time, every layer and
        target of them in one pass over the blocks (a request's seed, noise and replacement play no part)."""
        if not attention_takes_any_mask(self.model):
            raise InputError(f"attention knockout needs eager or sdpa attention; the model uses "
                             f"'{getattr(self.model.config, '_attn_implementation', None)}'")
        window = self._checked_window(window, facts_per_forward)
        prompts = [encode_fact_prompt(self.tokenizer, q.s, q.r, q.prefix) for q in requests]
        results: list[KnockoutResult | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc="knockout", unit="fact", disable=not progress) as bar, \
                self.speed.fused(self.model):
            for batch in batches_by_key([len(p.input_ids) for p in prompts], facts_per_forward):
                knocked = knockout_traces(self.model, self.tokenizer, self.layout, self.device,
                                          [requests[i] for i in batch], [prompts[i] for i in batch], window)
                for index, result in zip(batch, knocked):
                    results[index] = result
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

    def _checked_window(self, window: int | None, facts_per_forward: int) -> int:
        """The window to use (None: `default_window(num_layers)`); one InputError line for a window or a
        facts_per_forward below 1."""
        window = default_window(self.num_layers) if window is None else int(window)
        if window < 1:
            raise InputError(f"window must be >= 1, got {window}")
        if facts_per_forward < 1:
            raise InputError(f"facts_per_forward must be >= 1, got {facts_per_forward}")
        return window

    @torch.no_grad()
    def _replacement(self, request: TraceRequest, prompt: EncodedPrompt) -> tuple[torch.Tensor, float, str]:
        """(difference (1, subject tokens, hidden) of the replacement's token embeddings and the subject's, added
        where the noise goes, its std, the replacement): the corrupted run reads the replacement's tokens (to the
        rounding of that sum in the model's dtype)."""
        name = self._draw_replacement(request, prompt) if request.replacement is None else request.replacement
        ids = self._replaced_ids(request, prompt, name)
        b, e = prompt.subject_range
        embedded = self.layout.embed(torch.tensor([list(prompt.input_ids[b:e]), ids[b:e]], device=self.device)).float()
        difference = (embedded[1] - embedded[0])[None]
        return difference, float(difference.std()), name

    def _replaced_ids(self, request: TraceRequest, prompt: EncodedPrompt, name: str) -> list[int]:
        """The prompt's token ids with the subject's replaced by `name`'s; one InputError line unless `name` is a known
        word other than the subject with as many tokens."""
        check_known_words(self.tokenizer, replacement=name)
        if name == request.s:
            raise InputError(f"replacement '{name}' is the subject itself; give another entity")
        other = encode_fact_prompt(self.tokenizer, name, request.r, request.prefix)
        if not self._same_but_subject(prompt, other):
            (b, e), (ob, oe) = prompt.subject_range, other.subject_range
            raise InputError(f"replacement '{name}' takes {oe - ob} token(s) in the prompt and the subject "
                             f"'{request.s}' {e - b}, or changes the tokens around it; a replacement needs as many "
                             "tokens as the subject and the same prompt around them")
        return list(other.input_ids)

    @staticmethod
    def _same_but_subject(prompt: EncodedPrompt, other: EncodedPrompt) -> bool:
        """`other` is `prompt` with only the subject's tokens changed (same length, range and tokens around it)."""
        b, e = prompt.subject_range
        return (other.subject_range == prompt.subject_range and len(other.input_ids) == len(prompt.input_ids)
                and other.input_ids[:b] == prompt.input_ids[:b] and other.input_ids[e:] == prompt.input_ids[e:])

    @torch.no_grad()
    def _draw_replacement(self, request: TraceRequest, prompt: EncodedPrompt, chunk: int = 64) -> str:
        """An entity of `subjects` with as many tokens as the subject, drawn with the request's seed, whose prompt
        makes the model answer other than the clean answer (o_target, else the clean prediction)."""
        if not self.subjects:
            raise InputError("corruption replace needs a replacement, or CausalTracer(subjects=...) to draw one from")
        b, e = prompt.subject_range
        if self._subject_sizes is None:  # token counts of the subjects, once per tracer
            encoded = self.tokenizer(list(self.subjects), add_special_tokens=False)["input_ids"]
            self._subject_sizes = {name: len(ids) for name, ids in zip(self.subjects, encoded)}
        candidates = [name for name in self.subjects if name != request.s and self._subject_sizes[name] == e - b]
        order = [candidates[i] for i in np.random.default_rng(request.seed).permutation(len(candidates))]
        clean = torch.tensor([list(prompt.input_ids)], device=self.device)
        answer = (answer_token_id(self.tokenizer, request.o_target) if request.o_target is not None else
                  int(self.model(input_ids=clean, use_cache=False).logits[0, -1].argmax()))
        for start in range(0, len(order), chunk):
            others = {name: encode_fact_prompt(self.tokenizer, name, request.r, request.prefix)
                      for name in order[start : start + chunk]}
            names = [name for name, other in others.items() if self._same_but_subject(prompt, other)]
            if not names:
                continue
            rows = [list(others[name].input_ids) for name in names]
            predicted = self.model(input_ids=torch.tensor(rows, device=self.device), use_cache=False).logits[:, -1]
            for name, top in zip(names, predicted.argmax(-1).tolist()):
                if top != answer:
                    return name
        raise InputError(f"no entity of {e - b} tokens among the subjects changes the answer to '{request.s} "
                         f"{request.r}'; give a replacement")

    def _noise(self, noise: torch.Tensor | None, subject_range: tuple[int, int], num_samples: int,
               noise_level: float, seed: int) -> tuple[torch.Tensor, float]:
        """(noise (num_samples, subject tokens, hidden) on the device, its std): `noise` as given, else a draw with
        `seed` of std noise_level * sigma."""
        b, e = subject_range
        shape = (num_samples, e - b, self.layout.hidden_size)
        if noise is not None:
            if tuple(noise.shape) != shape:
                raise InputError(f"noise has shape {tuple(noise.shape)}; expected (num_samples, subject tokens, hidden) = {shape}")
            return noise.to(self.device, torch.float32), float(noise.float().std()) if noise.numel() > 1 else 0.0
        if noise_level <= 0:
            raise InputError(f"noise_level must be > 0, got {noise_level}")
        generator = torch.Generator().manual_seed(seed)
        std = noise_level * self.embedding_std
        return (torch.randn(shape, generator=generator) * std).to(self.device), std
