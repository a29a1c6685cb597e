"""What causal tracing returns and takes: `TraceResult` (one trace), `LocateResult` (the layer to edit read off an
MLP trace), `TraceRequest` (one fact to trace), and the kinds, positions and windows they use. `CausalTracer`
(`src.edit.causal_tracing`) computes them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from src.utils.errors import InputError

KINDS = ("hidden", "mlp", "attn")
CORRUPTIONS = ("gaussian", "replace")
METHODS = ("exact", "attribution")
KNOCKOUT_TARGETS = ("subject", "relation")
EDIT_POSITIONS = ("last", "subject_last")


def default_window(num_layers: int) -> int:
    """The original restores 10 of GPT-2 XL's 48 layers; keep that proportion (8 layers -> 2), at least 1."""
    return max(1, round(num_layers * 10 / 48))


def window_layers(layer: int, window: int, num_layers: int) -> range:
    """Layers restored together for a windowed trace at `layer`, as in the original: [l - w//2, l + ceil(w/2))."""
    return range(max(0, layer - window // 2), min(num_layers, layer - (-window // 2)))


def check_method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"unknown method '{method}'; allowed: {', '.join(METHODS)}")
    return method


def normalize_kind(kind: str | None) -> str:
    kind = "hidden" if kind is None else kind
    if kind not in KINDS:
        raise InputError(f"unknown kind '{kind}'; allowed: {', '.join(KINDS)} (None means hidden)")
    return kind


@dataclass(frozen=True)
class TraceResult:
    """One causal trace.

    scores: (tokens, layers) float32, the metric with that state restored, mean over noise samples: p(answer)
    (metric "prob") or logit(answer) - logit(contrast) (metric "logit_diff", contrast: the corrupted runs' answer,
    `src.edit.tracing.metrics.contrast_answers`). Method "exact" restores each state; "attribution" estimates the
    same to first order (attribution patching): low_score + (clean - corrupted state) . d metric / d state, taken in
    the corrupted runs (for windowed kinds summed over the window's layers).
    low_score: the metric with the subject corrupted and nothing restored; high_score: the metric in the clean run.
    subject_range: (b, e), e exclusive, token indices of the subject. window: layers restored together (1 for hidden).
    noise_std: absolute std of the noise added to the subject's token embeddings (corruption "replace": of the
    difference between the replacement's token embeddings and the subject's).
    corruption: "gaussian" (noise on the subject's token embeddings) or "replace" (the subject's tokens replaced by
    those of `replacement`, another entity with as many tokens: one corrupted run, num_samples 1).
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
    corruption: str = "gaussian"
    replacement: str | None = None
    metric: str = "prob"
    contrast: str | None = None
    contrast_id: int | None = None
    method: str = "exact"

    @property
    def indirect_effect(self) -> np.ndarray:
        """(tokens, layers): scores - low_score."""
        return self.scores - self.low_score

    @property
    def normalized_effect(self) -> np.ndarray:
        """(tokens, layers): (scores - low_score) / (high_score - low_score), 1 where a restoration recovers the clean
        metric, 0 where it recovers nothing; NaN everywhere when the corruption did not change the metric (by more than
        1e-8 of its size)."""
        spread = self.high_score - self.low_score
        if abs(spread) <= 1e-8 * max(1.0, abs(self.high_score)):
            return np.full_like(self.scores, np.nan)
        return ((self.scores - self.low_score) / spread).astype(np.float32)

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
        return cls(scores=array, **_prompt_fields_as_tuples(fields))

    def to_dict(self, include_scores: bool = True) -> dict:
        return {
            **({"scores": self.scores.tolist()} if include_scores else {}),
            "subject": self.subject, "relation": self.relation, "prompt": self.prompt,
            "low_score": self.low_score, "high_score": self.high_score,
            "input_ids": list(self.input_ids), "input_tokens": list(self.input_tokens),
            "subject_range": list(self.subject_range), "answer": self.answer, "answer_id": self.answer_id,
            "kind": self.kind, "window": self.window, "noise_std": self.noise_std, "num_samples": self.num_samples,
            # only traces that differ from the original's gaussian noise, p(answer) and exact restoration name it
            **({"corruption": self.corruption, "replacement": self.replacement} if self.corruption != "gaussian" else {}),
            **({"metric": self.metric, "contrast": self.contrast, "contrast_id": self.contrast_id}
               if self.metric != "prob" else {}),
            **({"method": self.method} if self.method != "exact" else {}),
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


@dataclass(frozen=True)
class KnockoutResult:
    """Attention knockout (Geva et al. 2023, "Dissecting Recall of Factual Associations") for one fact.

    scores: {target: (layers,) float32}, p(answer) in the clean run with the attention edges from the last token to
    the target's positions (`positions[target]`: "subject", the subject's tokens; "relation", the tokens after the
    subject, the last one included) blocked in the `window` layers around each layer (`window_layers`);
    high_score: p(answer) with nothing blocked. `change(target)`: scores - high_score, negative where the last token
    needs to read those positions there."""

    subject: str
    relation: str
    prompt: str
    input_ids: tuple[int, ...]
    input_tokens: tuple[str, ...]
    subject_range: tuple[int, int]
    answer: str
    answer_id: int
    window: int
    high_score: float
    positions: dict[str, tuple[int, ...]]
    scores: dict[str, np.ndarray] = field(repr=False)

    @property
    def num_layers(self) -> int:
        return int(next(iter(self.scores.values())).shape[0])

    def change(self, target: str) -> np.ndarray:
        """(layers,): p(answer) with the edges to `target` blocked minus p(answer) in the clean run."""
        if target not in self.scores:
            raise InputError(f"unknown knockout target '{target}'; allowed: {', '.join(self.scores)}")
        return self.scores[target] - self.high_score

    def relative_change(self, target: str) -> np.ndarray:
        """(layers,): change / clean p(answer), Geva et al.'s measure."""
        return self.change(target) / self.high_score

    def to_dict(self) -> dict:
        return {"subject": self.subject, "relation": self.relation, "prompt": self.prompt,
                "input_ids": list(self.input_ids), "input_tokens": list(self.input_tokens),
                "subject_range": list(self.subject_range), "answer": self.answer, "answer_id": self.answer_id,
                "window": self.window, "high_score": self.high_score,
                "positions": {k: list(v) for k, v in self.positions.items()},
                "scores": {k: v.tolist() for k, v in self.scores.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "KnockoutResult":
        fields = _prompt_fields_as_tuples(dict(data))
        fields["positions"] = {k: tuple(v) for k, v in fields["positions"].items()}
        scores = {k: np.asarray(v, dtype=np.float32) for k, v in fields.pop("scores").items()}
        for array in scores.values():
            array.setflags(write=False)
        return cls(scores=scores, **fields)


def _prompt_fields_as_tuples(fields: dict) -> dict:
    """`fields` (read from JSON) with the prompt's token ids, tokens and subject range as the tuples results hold."""
    for key in ("input_ids", "input_tokens", "subject_range"):
        fields[key] = tuple(fields[key])
    return fields


@dataclass(frozen=True, eq=False)
class TraceRequest:
    """One fact to trace: `"{prefix}{s} {r}"` -> o_target (None: the model's own prediction).

    noise: exact additive noise (num_samples, subject tokens, hidden size); None draws it with `seed`.
    replacement: with corruption "replace", the entity whose tokens replace the subject's (None: drawn with `seed`).
    """

    s: str
    r: str
    o_target: str | None = None
    seed: int = 0
    noise: torch.Tensor | None = field(default=None, repr=False)
    prefix: str = ""
    replacement: str | None = None
