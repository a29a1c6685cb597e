"""Deterministic KG generation.

Every entity `E_i` is the subject of `relations_per_entity` distinct relations (drawn without replacement), so
relations are functional by construction. Objects are drawn either
- "ba": by preferential attachment (Barabasi-Albert): an entity is picked as object with probability proportional
  to its degree so far plus one, so a few hub entities collect many facts (power-law in-degrees); or
- "er": uniformly at random (Erdos-Renyi), giving Poisson-like degrees.
Facts listed in `anchor_facts` (e.g. the usage guide's `E_000 R_04 E_001`) are set exactly as given.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from src.kg.graph import Fact, KnowledgeGraph
from src.utils.config import dataclass_from_mapping, read_yaml, resolve_relative_to
from src.utils.errors import InputError

GRAPH_TYPES = ("ba", "er")


@dataclass(frozen=True)
class CorpusConfig:
    """How facts are written as training sentences (see `src.kg.corpus`).

    chain_lines_per_fact: number of extra lines chaining `chain_length` random facts
        (`E_000 R_04 E_001 ; E_417 R_02 E_077`), per fact, so a fact behind a context prefix is in distribution.
    chain_length: facts per chain line (>= 2).
    alias_fraction: fraction of facts also written with their relation's alias token (`R_04_alt`), so that an
        edit's generalization to a paraphrase can be measured; facts left out test whether the alias is understood.
    """

    chain_lines_per_fact: float = 0.5
    chain_length: int = 2
    alias_fraction: float = 0.5
    alias_suffix: str = "_alt"
    separator: str = ";"


@dataclass(frozen=True)
class KGConfig:
    graph_type: str = "ba"
    num_entities: int = 1000
    num_relations: int = 20
    relations_per_entity: int = 7
    seed: int = 0
    entity_prefix: str = "E_"
    relation_prefix: str = "R_"
    anchor_facts: tuple[tuple[str, str, str], ...] = (("E_000", "R_04", "E_001"),)
    output_dir: str = "data/kg/ba"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)

    def __post_init__(self) -> None:
        if self.graph_type not in GRAPH_TYPES:
            raise InputError(f"unknown graph_type '{self.graph_type}'; allowed: {', '.join(GRAPH_TYPES)}")
        if self.num_entities < 2:
            raise InputError(f"num_entities must be >= 2, got {self.num_entities}")
        if self.num_relations < 1:
            raise InputError(f"num_relations must be >= 1, got {self.num_relations}")
        if not 1 <= self.relations_per_entity <= self.num_relations:
            raise InputError(
                f"relations_per_entity={self.relations_per_entity} is impossible with num_relations={self.num_relations}; "
                f"it must be between 1 and {self.num_relations}"
            )
        if self.corpus.chain_length < 2 or self.corpus.chain_lines_per_fact < 0 or not 0 <= self.corpus.alias_fraction <= 1:
            raise InputError(f"bad corpus settings {self.corpus}: need chain_length >= 2, chain_lines_per_fact >= 0, 0 <= alias_fraction <= 1")

    def entity_names(self) -> list[str]:
        width = max(3, len(str(self.num_entities - 1)))
        return [f"{self.entity_prefix}{i:0{width}d}" for i in range(self.num_entities)]

    def relation_names(self) -> list[str]:
        width = max(2, len(str(self.num_relations - 1)))
        return [f"{self.relation_prefix}{i:0{width}d}" for i in range(self.num_relations)]

    def to_dict(self) -> dict:
        return asdict(self)


def load_kg_config(path: str | Path) -> tuple[KGConfig, Path]:
    """Read a KG config; returns it and the output directory resolved relative to the config file."""
    data = read_yaml(path, path_keys=("output_dir",))
    corpus = dataclass_from_mapping(CorpusConfig, data.pop("corpus", {}) or {}, f"{path} (corpus)")
    if "anchor_facts" in data:
        data["anchor_facts"] = tuple(tuple(str(x) for x in fact) for fact in data["anchor_facts"] or ())
    config = dataclass_from_mapping(KGConfig, {**data, "corpus": corpus}, str(path))
    return config, resolve_relative_to(path, config.output_dir)


def generate_graph(config: KGConfig) -> KnowledgeGraph:
    """Draw the facts; the same config (seed included) gives the same graph."""
    rng = np.random.default_rng(config.seed)
    entities = config.entity_names()
    relations = config.relation_names()
    anchors = _validated_anchors(config, entities, relations)
    n = len(entities)
    degree = np.zeros(n, dtype=np.float64)
    objects: dict[tuple[int, int], int] = {}

    for s in rng.permutation(n):
        chosen_relations = rng.choice(len(relations), size=config.relations_per_entity, replace=False)
        for r in sorted(chosen_relations.tolist()):
            if config.graph_type == "ba":
                weights = degree + 1.0
                weights[s] = 0.0
                o = int(rng.choice(n, p=weights / weights.sum()))
            else:
                o = int(rng.integers(n - 1))
                o = o + 1 if o >= s else o
            objects[(int(s), r)] = o
            degree[s] += 1
            degree[o] += 1

    for s, r, o in anchors:
        objects[(s, r)] = o
    facts = [Fact(entities[s], relations[r], entities[o]) for (s, r), o in sorted(objects.items())]
    return KnowledgeGraph(facts=tuple(facts), entities=tuple(entities), relations=tuple(relations))


def _validated_anchors(config: KGConfig, entities: list[str], relations: list[str]) -> list[tuple[int, int, int]]:
    entity_index = {name: i for i, name in enumerate(entities)}
    relation_index = {name: i for i, name in enumerate(relations)}
    anchors = []
    for fact in config.anchor_facts:
        if len(fact) != 3:
            raise InputError(f"anchor fact {fact} must be [subject, relation, object]")
        s, r, o = fact
        for name, index, kind in ((s, entity_index, "entity"), (r, relation_index, "relation"), (o, entity_index, "entity")):
            if name not in index:
                raise InputError(f"anchor fact {list(fact)}: unknown {kind} '{name}' for this config")
        if s == o:
            raise InputError(f"anchor fact {list(fact)} links an entity to itself")
        anchors.append((entity_index[s], relation_index[r], entity_index[o]))
    return anchors


def degree_statistics(graph: KnowledgeGraph) -> dict:
    """Degree summary (in, out, total) for meta.json: mean, max, quantiles and the share of facts held by the top 1%."""
    index = {name: i for i, name in enumerate(graph.entities)}
    in_degree = np.zeros(len(index), dtype=np.int64)
    out_degree = np.zeros(len(index), dtype=np.int64)
    for fact in graph.facts:
        out_degree[index[fact.s]] += 1
        in_degree[index[fact.o]] += 1
    total = in_degree + out_degree

    def summary(values: np.ndarray) -> dict:
        top = np.sort(values)[::-1][: max(1, len(values) // 100)]
        return {
            "mean": float(values.mean()),
            "max": int(values.max()),
            "median": float(np.median(values)),
            "p99": float(np.quantile(values, 0.99)),
            "top1pct_share": float(top.sum() / max(1, values.sum())),
        }

    return {"in": summary(in_degree), "out": summary(out_degree), "total": summary(total)}
