"""ROME hyperparameters: a frozen dataclass with defaults, loadable from YAML or a dict (unknown keys are errors)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from src.utils.config import load_dataclass
from src.utils.errors import InputError

FACT_TOKENS = ("last", "subject_last")
KEY_MODES = ("consistent", "original")
V_OBJECTIVES = ("rank_one", "lookup")
MOM2_SOURCES = ("corpus", "fact_prompts", "both")
WEIGHT_DECAY_FORMS = ("squared", "norm")
KL_DIRECTIONS = ("forward", "reverse")
V_STOPS = ("target_prob", "loss")
V_OPTIMIZERS = ("adam", "normalized_gd")


@dataclass(frozen=True)
class ROMEHyperParams:
    """Every field is documented in configs/rome_gpt_small.yaml and docs/method.md ("ROME hyperparameters")."""

    layer: int | None = None
    fact_token: str = "last"
    clamp_norm_factor: float = 20.0
    kl_factor: float = 0.0625
    v_lr: float = 0.5
    v_num_grad_steps: int = 100
    v_weight_decay: float = 0.001
    v_stop_prob: float = 0.95
    v_objective: str = "rank_one"
    v_weight_decay_form: str = "squared"
    kl_direction: str = "forward"
    v_stop: str = "target_prob"
    v_stop_loss: float = 0.05
    v_stop_refine: int = 0
    v_optimizer: str = "adam"
    num_context_prefixes: int = 10
    bare_prompt_weight: float | None = 0.5
    key_mode: str = "consistent"
    mom2_n_samples: int = 0
    mom2_source: str = "corpus"
    locate_noise_level: float = 3.0
    locate_num_samples: int = 10
    locate_window: int | None = None
    layer_retries: int = 1
    past_keys_weight: float = 0.0
    null_space_threshold: float = 0.0
    num_eval_prefixes: int = 5
    num_eval_random_facts: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.fact_token in FACT_TOKENS, f"fact_token must be one of {', '.join(FACT_TOKENS)}, got '{self.fact_token}'"),
            (self.key_mode in KEY_MODES, f"key_mode must be one of {', '.join(KEY_MODES)}, got '{self.key_mode}'"),
            (self.v_objective in V_OBJECTIVES, f"v_objective must be one of {', '.join(V_OBJECTIVES)}, got '{self.v_objective}'"),
            (self.v_weight_decay_form in WEIGHT_DECAY_FORMS,
             f"v_weight_decay_form must be one of {', '.join(WEIGHT_DECAY_FORMS)}, got '{self.v_weight_decay_form}'"),
            (self.kl_direction in KL_DIRECTIONS, f"kl_direction must be one of {', '.join(KL_DIRECTIONS)}, got '{self.kl_direction}'"),
            (self.v_stop in V_STOPS, f"v_stop must be one of {', '.join(V_STOPS)}, got '{self.v_stop}'"),
            (self.v_optimizer in V_OPTIMIZERS,
             f"v_optimizer must be one of {', '.join(V_OPTIMIZERS)}, got '{self.v_optimizer}'"),
            (self.v_lr > 0, f"v_lr must be > 0, got {self.v_lr}"),
            (self.mom2_source in MOM2_SOURCES, f"mom2_source must be one of {', '.join(MOM2_SOURCES)}, got '{self.mom2_source}'"),
            (self.clamp_norm_factor > 0, f"clamp_norm_factor must be > 0, got {self.clamp_norm_factor}"),
            (self.v_stop_refine >= 0, f"v_stop_refine must be >= 0, got {self.v_stop_refine}"),
            (self.v_stop_refine == 0 or self.v_stop == "target_prob",
             f"v_stop_refine {self.v_stop_refine} needs v_stop target_prob, got v_stop '{self.v_stop}'"),
            (self.v_num_grad_steps >= 1, f"v_num_grad_steps must be >= 1, got {self.v_num_grad_steps}"),
            (self.num_context_prefixes >= 0, f"num_context_prefixes must be >= 0, got {self.num_context_prefixes}"),
            (self.bare_prompt_weight is None or 0 < self.bare_prompt_weight <= 1,
             f"bare_prompt_weight must be in (0, 1] or null (uniform), got {self.bare_prompt_weight}"),
            (self.layer is None or self.layer >= 0, f"layer must be >= 0 or null, got {self.layer}"),
            (self.past_keys_weight >= 0, f"past_keys_weight must be >= 0, got {self.past_keys_weight}"),
            (self.layer_retries >= 0, f"layer_retries must be >= 0, got {self.layer_retries}"),
            (0 <= self.null_space_threshold < 1, f"null_space_threshold must be in [0, 1), got {self.null_space_threshold}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **overrides: Any) -> "ROMEHyperParams":
        return replace(self, **overrides)


def load_hparams(source: "ROMEHyperParams | Mapping[str, Any] | str | Path | None") -> ROMEHyperParams:
    """From a dataclass, a dict, or a YAML path; None gives the defaults."""
    return load_dataclass(ROMEHyperParams, source)
