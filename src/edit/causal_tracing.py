"""Causal tracing (ROME section 2): which hidden states carry a fact?

The subject's token embeddings are corrupted with Gaussian noise; then, one (token, layer) at a time, a state of the
clean run is restored into the corrupted run and p(answer) at the last position is measured. The score of a restored
state minus the corrupted score (`low_score`) is its indirect effect.

This implementation gives the numbers of the original one-forward-per-restoration algorithm
(`src.edit.tracing_reference`) with far fewer forwards:
- many restorations share one forward (rows = restorations x noise samples, chunked to bound memory);
- tokens before the subject never see noise, so restoring them changes nothing: their score is `low_score`;
- the layers below the first restored one are identical for every restoration there, so they are computed once in
  the corrupted run and the forward restarts from that layer's recorded input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.edit.hooks import RecordCall, Trace, TraceDict, primary
from src.edit.model_layout import ModelLayout
from src.edit.prompts import EncodedPrompt, answer_token_id, encode_fact_prompt
from src.utils.device import resolve_device
from src.utils.errors import InputError

KINDS = ("hidden", "mlp", "attn")
EDIT_POSITIONS = ("last", "subject_last")


def default_window(num_layers: int) -> int:
    """The original restores 10 of GPT-2 XL's 48 layers; keep that proportion (8 layers -> 2), at least 1."""
    return max(1, round(num_layers * 10 / 48))


def window_layers(layer: int, window: int, num_layers: int) -> range:
    """Layers restored together for a windowed trace at `layer`, as in the original: [l - w//2, l + ceil(w/2))."""
    return range(max(0, layer - window // 2), min(num_layers, layer - (-window // 2)))


def normalize_kind(kind: str | None) -> str:
    kind = "hidden" if kind is None else kind
    if kind not in KINDS:
        raise InputError(f"unknown kind '{kind}'; allowed: {', '.join(KINDS)} (None means hidden)")
    return kind


@dataclass(frozen=True)
class TraceResult:
    """One causal trace.

    scores: (tokens, layers) float32, mean p(answer) over noise samples with that state restored.
    low_score: p(answer) with the subject corrupted and nothing restored; high_score: p(answer) in the clean run.
    subject_range: (b, e), e exclusive, token indices of the subject. window: layers restored together (1 for hidden).
    noise_std: absolute std of the noise added to the subject's token embeddings.
    """

    subject: str
    relation: str
    prompt: str
    scores: np.ndarray = field(repr=False)
    low_score: float
    high_score: float
    input_ids: tuple[int, ...]
    input_tokens: tuple[str, ...]
    subject_range: tuple[int, int]
    answer: str
    answer_id: int
    kind: str
    window: int
    noise_std: float
    num_samples: int

    @property
    def indirect_effect(self) -> np.ndarray:
        """(tokens, layers): scores - low_score."""
        return self.scores - self.low_score

    @property
    def num_layers(self) -> int:
        return int(self.scores.shape[1])

    def token_index(self, position: str) -> int:
        """Index of "last" (the prompt's final token) or "subject_last"."""
        if position == "last":
            return len(self.input_ids) - 1
        if position == "subject_last":
            return self.subject_range[1] - 1
        raise InputError(f"unknown position '{position}'; allowed: {', '.join(EDIT_POSITIONS)}")

    def peak(self) -> tuple[int, int, float]:
        """(token, layer, effect) of the largest indirect effect."""
        effect = self.indirect_effect
        token, layer = np.unravel_index(int(np.argmax(effect)), effect.shape)
        return int(token), int(layer), float(effect[token, layer])

    def best_layer(self, position: str = "last") -> int:
        """Layer with the largest indirect effect at `position` (ties: the lowest layer)."""
        return int(np.argmax(self.indirect_effect[self.token_index(position)]))

    @classmethod
    def from_dict(cls, data: dict, scores: np.ndarray | None = None) -> "TraceResult":
        """Inverse of `to_dict`; `scores` may come separately (e.g. from traces.npz)."""
        fields = dict(data)
        array = np.asarray(fields.pop("scores") if scores is None else scores, dtype=np.float32)
        fields.pop("scores", None)
        array.setflags(write=False)
        for key in ("input_ids", "input_tokens", "subject_range"):
            fields[key] = tuple(fields[key])
        return cls(scores=array, **fields)

    def to_dict(self, include_scores: bool = True) -> dict:
        return {
            **({"scores": self.scores.tolist()} if include_scores else {}),
            "subject": self.subject, "relation": self.relation, "prompt": self.prompt,
            "low_score": self.low_score, "high_score": self.high_score,
            "input_ids": list(self.input_ids), "input_tokens": list(self.input_tokens),
            "subject_range": list(self.subject_range), "answer": self.answer, "answer_id": self.answer_id,
            "kind": self.kind, "window": self.window, "noise_std": self.noise_std, "num_samples": self.num_samples,
        }


@dataclass(frozen=True)
class LocateResult:
    """The layer to edit: argmax over layers of the MLP indirect effect at token `token_index` ("last" or
    "subject_last"), from an MLP trace with `window` layers restored together."""

    layer: int
    position: str
    token_index: int
    effects: tuple[float, ...]
    trace: TraceResult = field(repr=False)

    @classmethod
    def from_trace(cls, trace: TraceResult, position: str) -> "LocateResult":
        """Read the best layer at `position` off an MLP trace (no new forward)."""
        token = trace.token_index(position)
        return cls(layer=trace.best_layer(position), position=position, token_index=token,
                   effects=tuple(float(e) for e in trace.indirect_effect[token]), trace=trace)

    def to_dict(self) -> dict:
        return {"layer": self.layer, "position": self.position, "token_index": self.token_index,
                "effects": list(self.effects), "kind": self.trace.kind, "window": self.trace.window}


@dataclass
class _Runs:
    """What the forward of 1 clean + N corrupted rows leaves behind, shared by every kind and restoration."""

    prompt: EncodedPrompt
    answer_id: int
    high_score: float
    low_score: float
    clean: dict[str, torch.Tensor]  # "hidden.l" / "mlp.l" / "attn.l" -> (T, d) clean outputs
    corrupted_inputs: list[torch.Tensor]  # block l input in the corrupted run, (N, T, d); index L = final output
    block_args: tuple  # what block 0 was called with besides the hidden states (mask, position ids, ...)
    block_kwargs: dict
    noise_std: float
    num_samples: int


class CausalTracer:
    """Causal tracing for a causal LM and its tokenizer.

    Args:
        model, tokenizer: any supported family (see `src.edit.model_layout`); the model is moved to `device`.
        device: "auto" (CUDA if present, else CPU), "cpu", "cuda", "cuda:N".
        subjects: entity names whose token embeddings define sigma, the embedding std that `noise_level` multiplies
            (the original pools the embeddings of subject tokens); default: all non-special vocabulary tokens.
        noise_std: absolute sigma instead of computing it.
        max_batch_tokens: memory bound for one forward (rows x tokens).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        device: str | torch.device = "auto",
        subjects: Sequence[str] | None = None,
        noise_std: float | None = None,
        max_batch_tokens: int = 1 << 16,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.layout = ModelLayout.of(model)
        self.max_batch_tokens = max_batch_tokens
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
        return self.trace_kinds(s, r, o_target, noise_level, num_samples, (normalize_kind(kind),), window, noise, seed,
                                prefix)[
            normalize_kind(kind)
        ]

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
        kinds = [normalize_kind(k) for k in kinds]
        window = default_window(self.num_layers) if window is None else int(window)
        if window < 1:
            raise InputError(f"window must be >= 1, got {window}")
        runs = self._runs(s, r, o_target, noise_level, num_samples, noise, seed, prefix)
        return self._trace(runs, s, r, kinds, window)

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

        position "last" (default) is where our KG models assemble the answer (see DESIGN.md); "subject_last" is the
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
    def _runs(self, s, r, o_target, noise_level, num_samples, noise, seed, prefix) -> _Runs:
        """One forward of 1 + N rows: row 0 clean, rows 1..N with noise on the subject's token embeddings."""
        if num_samples < 1:
            raise InputError(f"num_samples must be >= 1, got {num_samples}")
        prompt = encode_fact_prompt(self.tokenizer, s, r, prefix)
        layout, L = self.layout, self.num_layers
        b, e = prompt.subject_range
        answer_id = None if o_target is None else answer_token_id(self.tokenizer, o_target)
        added, noise_std = self._noise(noise, (num_samples, e - b, layout.hidden_size), noise_level, seed)

        def corrupt(embeddings: torch.Tensor) -> torch.Tensor:
            embeddings = embeddings.clone()
            embeddings[1:, b:e] += added.to(embeddings.dtype)
            return embeddings

        input_ids = torch.tensor([prompt.input_ids] * (num_samples + 1), device=self.device)
        modules = {f"{kind}.{l}": layout.sublayer(kind, l) for kind in KINDS for l in range(L)}
        with Trace(layout.embed, edit_output=corrupt, retain_output=False), TraceDict(modules) as traces, \
                Trace(layout.block(0), retain_input=True, retain_output=False) as first, \
                RecordCall(layout.block(0)) as block_call:
            logits = self.model(input_ids=input_ids, use_cache=False).logits[:, -1].float()
        answer_id = int(logits[0].argmax()) if answer_id is None else answer_id
        probabilities = torch.softmax(logits, dim=-1)[:, answer_id]
        clean = {name: trace.output[0] for name, trace in traces.items()}
        corrupted_inputs = [first.input[1:]] + [traces[f"hidden.{l}"].output[1:] for l in range(L)]
        block_args = _first_row(block_call.args[1:], num_samples + 1)
        block_kwargs = _first_row(block_call.kwargs, num_samples + 1)
        return _Runs(prompt, answer_id, float(probabilities[0]), float(probabilities[1:].mean()), clean,
                     corrupted_inputs, block_args, block_kwargs, noise_std, num_samples)

    # ------------------------------------------------------------------ restorations

    @torch.no_grad()
    def _trace(self, runs: _Runs, s: str, r: str, kinds: Sequence[str], window: int) -> dict[str, TraceResult]:
        T, L, N = len(runs.prompt.input_ids), self.num_layers, runs.num_samples
        b = runs.prompt.subject_range[0]
        restorations = []
        for kind in kinds:
            for l in range(L):
                layers = range(l, l + 1) if kind == "hidden" else window_layers(l, window, L)
                start = l + 1 if kind == "hidden" else layers.start
                restorations.extend(_Restoration(kind, t, l, layers, start) for t in range(b, T))
        restorations.sort(key=lambda x: x.start)

        scores = {kind: np.full((T, L), runs.low_score, dtype=np.float32) for kind in kinds}
        per_chunk = max(1, self.max_batch_tokens // (T * N))
        for i in range(0, len(restorations), per_chunk):
            chunk = restorations[i : i + per_chunk]
            for item, p in zip(chunk, self._replay(runs, chunk).tolist()):
                scores[item.kind][item.token, item.layer] = p

        tokens = tuple(self.tokenizer.convert_ids_to_tokens(list(runs.prompt.input_ids)))
        results = {}
        for kind in kinds:
            scores[kind].setflags(write=False)
            results[kind] = TraceResult(
                subject=s, relation=r, prompt=runs.prompt.text, scores=scores[kind], low_score=runs.low_score,
                high_score=runs.high_score, input_ids=runs.prompt.input_ids, input_tokens=tokens,
                subject_range=runs.prompt.subject_range, answer=self.tokenizer.convert_ids_to_tokens(runs.answer_id),
                answer_id=runs.answer_id, kind=kind, window=1 if kind == "hidden" else window,
                noise_std=runs.noise_std, num_samples=N,
            )
        return results

    def _replay(self, runs: _Runs, chunk: list["_Restoration"]) -> torch.Tensor:
        """Mean p(answer) per restoration in `chunk` (sorted by start layer), in one pass over the blocks.

        Rows (N per restoration) join the batch at their start layer, from the corrupted run's input to that block,
        so each block runs once on exactly the rows that need it.
        """
        N, L = runs.num_samples, self.num_layers
        hidden: torch.Tensor | None = None
        joined = 0
        for layer in range(chunk[0].start, L + 1):
            newcomers = [item for item in chunk[joined:] if item.start == layer]
            if newcomers:
                fresh = runs.corrupted_inputs[layer].repeat(len(newcomers), 1, 1)
                for index, item in enumerate(newcomers):  # hidden kind: block `layer - 1`'s output, restored at t
                    if item.kind == "hidden":
                        fresh[index * N : (index + 1) * N, item.token] = runs.clean[f"hidden.{item.layer}"][item.token]
                hidden = fresh if hidden is None else torch.cat([hidden, fresh])
                joined += len(newcomers)
            if layer == L:
                break
            masks: dict[str, torch.Tensor] = {}
            for index, item in enumerate(chunk[:joined]):
                if item.kind != "hidden" and layer in item.layers:
                    mask = masks.setdefault(item.kind, torch.zeros(hidden.shape[:2], dtype=torch.bool, device=self.device))
                    mask[index * N : (index + 1) * N, item.token] = True

            def restore(kind: str, output: torch.Tensor, layer: int = layer) -> torch.Tensor:
                clean = runs.clean[f"{kind}.{layer}"].to(output.dtype)
                return torch.where(masks[kind][..., None], clean, output)

            modules = {kind: self.layout.sublayer(kind, layer) for kind in masks}
            with TraceDict(modules, retain_output=False, edit_output=restore):
                hidden = primary(self.layout.block(layer)(hidden, *runs.block_args, **runs.block_kwargs))
        logits = self.layout.unembed(self.layout.final_norm(hidden[:, -1])).float()
        probabilities = torch.softmax(logits, dim=-1)[:, runs.answer_id]
        return probabilities.view(len(chunk), N).mean(dim=1).cpu()


@dataclass(frozen=True)
class _Restoration:
    """Restore `kind` outputs of `layers` at `token` (reported at `layer`); the forward restarts at block `start`."""

    kind: str
    token: int
    layer: int
    layers: range
    start: int


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
