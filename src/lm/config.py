"""The training config file: where the KG is, where the model goes, the model shape and the optimiser."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from src.lm.model import ModelConfig
from src.lm.tokenizer import TOKENIZER_KINDS
from src.lm.train import OptimConfig
from src.utils.config import dataclass_from_mapping, read_yaml, resolve_relative_to
from src.utils.errors import InputError


@dataclass(frozen=True)
class TokenizerConfig:
    """kind: "word" (one token per entity/relation) or "bpe" (subword pieces, `vocab_size` tokens, trained on the
    corpus). bos: every text (training lines, prompts, statistics) starts with <bos>."""

    kind: str = "word"
    vocab_size: int = 0
    bos: bool = False

    def __post_init__(self) -> None:
        if self.kind not in TOKENIZER_KINDS:
            raise InputError(f"unknown tokenizer kind '{self.kind}'; allowed: {', '.join(TOKENIZER_KINDS)}")
        if self.kind == "bpe" and self.vocab_size <= 0:
            raise InputError(f"tokenizer kind bpe needs vocab_size > 0, got {self.vocab_size}")
        if self.kind == "word" and self.vocab_size:
            raise InputError("vocab_size is for kind bpe; the word tokenizer's vocabulary is the corpus' words")


@dataclass(frozen=True)
class TrainConfig:
    kg_dir: Path
    output_dir: Path
    seed: int
    model: ModelConfig
    optim: OptimConfig
    tokenizer: TokenizerConfig = TokenizerConfig()

    def to_dict(self) -> dict:
        return {"kg_dir": str(self.kg_dir), "output_dir": str(self.output_dir), "seed": self.seed,
                "model": self.model.to_dict(), "optim": asdict(self.optim), "tokenizer": asdict(self.tokenizer)}


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a training YAML (or an overlay of one, `base: FILE`); `kg_dir` and `output_dir` are relative to the YAML
    file that sets them."""
    data = read_yaml(path, path_keys=("kg_dir", "output_dir"))
    top = {"kg_dir", "output_dir", "seed", "model", "optim", "tokenizer"}
    unknown = sorted(set(data) - top)
    if unknown:
        raise InputError(f"unknown config key '{unknown[0]}' in {path}; allowed keys: {', '.join(sorted(top))}")
    return TrainConfig(
        kg_dir=resolve_relative_to(path, data.get("kg_dir", "../data/kg/ba")),
        output_dir=resolve_relative_to(path, data.get("output_dir", "../outputs/models/gpt_small")),
        seed=int(data.get("seed", 0)),
        model=dataclass_from_mapping(ModelConfig, data.get("model") or {}, f"{path} (model)"),
        optim=dataclass_from_mapping(OptimConfig, data.get("optim") or {}, f"{path} (optim)"),
        tokenizer=dataclass_from_mapping(TokenizerConfig, data.get("tokenizer") or {}, f"{path} (tokenizer)"),
    )
