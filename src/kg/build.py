"""Build a KG directory from a config: graph.jsonl, corpus.train.txt and meta.json (all written atomically)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from src.kg.corpus import build_corpus, relation_aliases, write_corpus
from src.kg.generate import KGConfig, degree_statistics, generate_graph
from src.kg.graph import KnowledgeGraph, write_graph_jsonl
from src.utils.io import atomic_write_json, sha256_file

GRAPH_FILE = "graph.jsonl"
CORPUS_FILE = "corpus.train.txt"
META_FILE = "meta.json"


@dataclass(frozen=True)
class BuiltKG:
    directory: Path
    graph: KnowledgeGraph
    num_corpus_lines: int

    @property
    def graph_path(self) -> Path:
        return self.directory / GRAPH_FILE

    @property
    def corpus_path(self) -> Path:
        return self.directory / CORPUS_FILE


def build_kg(config: KGConfig, output_dir: str | Path) -> BuiltKG:
    output_dir = Path(output_dir)
    graph = generate_graph(config)
    lines = build_corpus(graph, config.corpus, config.seed)
    write_graph_jsonl(graph, output_dir / GRAPH_FILE)
    write_corpus(lines, output_dir / CORPUS_FILE)
    meta = {
        "config": config.to_dict(),
        "num_entities": len(graph.entities),
        "num_relations": len(graph.relations),
        "num_facts": len(graph),
        "num_corpus_lines": len(lines),
        "relation_aliases": relation_aliases(graph.relations, config.corpus),
        "degree": degree_statistics(graph),
        "sha256": {GRAPH_FILE: sha256_file(output_dir / GRAPH_FILE), CORPUS_FILE: sha256_file(output_dir / CORPUS_FILE)},
    }
    atomic_write_json(output_dir / META_FILE, meta)
    return BuiltKG(directory=output_dir, graph=graph, num_corpus_lines=len(lines))
