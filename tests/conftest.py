"""Shared fixtures: a tiny KG (30 entities) and a tiny GPT-2 trained on it to 100% inside the test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from src.kg.build import build_kg
from src.kg.generate import CorpusConfig, KGConfig
from src.lm.config import TrainConfig
from src.lm.model import ModelConfig, load_model
from src.pipelines.train_model import train_and_save
from src.lm.train import OptimConfig

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_KG = KGConfig(
    graph_type="ba",
    num_entities=30,
    num_relations=4,
    relations_per_entity=2,
    seed=3,
    anchor_facts=(("E_000", "R_01", "E_001"),),
    corpus=CorpusConfig(chain_lines_per_fact=0.5, chain_length=2, alias_fraction=0.5),
)
TINY_MODEL = ModelConfig(n_layer=4, n_embd=64, n_head=4, n_positions=16)
TINY_OPTIM = OptimConfig(batch_size=64, lr=5e-3, warmup_steps=20, max_steps=1500, eval_every=25, target_accuracy=1.0)


@pytest.fixture(autouse=True, scope="session")
def isolated_stats_cache(tmp_path_factory):
    """Key statistics are cached under $KG_ROME_CACHE; keep the tests' caches out of the home directory."""
    previous = os.environ.get("KG_ROME_CACHE")
    os.environ["KG_ROME_CACHE"] = str(tmp_path_factory.mktemp("kg_rome_cache"))
    yield
    if previous is None:
        os.environ.pop("KG_ROME_CACHE", None)
    else:
        os.environ["KG_ROME_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_kg(tmp_path_factory):
    return build_kg(TINY_KG, tmp_path_factory.mktemp("kg") / "tiny")


@pytest.fixture(scope="session")
def tiny_train_config(tiny_kg, tmp_path_factory) -> TrainConfig:
    return TrainConfig(kg_dir=tiny_kg.directory, output_dir=tmp_path_factory.mktemp("models") / "tiny",
                       seed=0, model=TINY_MODEL, optim=TINY_OPTIM)


@pytest.fixture(scope="session")
def tiny_trained(tiny_train_config):
    """(model_dir, TrainResult) of the tiny model trained to 100% fact accuracy."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    trained = train_and_save(tiny_train_config, progress=False)
    return trained.model_dir, trained.result


@pytest.fixture()
def tiny_model(tiny_trained):
    """A fresh copy of the trained tiny model and its tokenizer (tests may modify the model)."""
    model, tokenizer = load_model(tiny_trained[0], device="cpu")
    return model, tokenizer
