import dataclasses
import json
from collections import Counter

import numpy as np
import pytest

from src.cli import make_kg
from src.kg.corpus import build_corpus, parse_sentence, read_corpus
from src.kg.generate import KGConfig, generate_graph, load_kg_config
from src.kg.graph import Fact, read_graph_jsonl
from src.utils.errors import InputError
from tests.conftest import REPO_ROOT, TINY_KG


def test_default_config_holds_the_guide_fact_and_is_functional():
    config, output_dir = load_kg_config(REPO_ROOT / "configs" / "kg_ba.yaml")
    assert output_dir == REPO_ROOT / "data" / "kg" / "ba"
    graph = generate_graph(config)
    assert len(graph.entities) == 1000 and graph.entities[0] == "E_000" and graph.entities[-1] == "E_999"
    assert graph.object_of("E_000", "R_04") == "E_001"
    pairs = Counter((f.s, f.r) for f in graph.facts)
    assert max(pairs.values()) == 1
    assert all(f.s != f.o for f in graph.facts)


def test_generation_is_deterministic_and_seed_dependent():
    assert generate_graph(TINY_KG).facts == generate_graph(TINY_KG).facts
    assert generate_graph(TINY_KG).facts != generate_graph(dataclasses.replace(TINY_KG, seed=4)).facts
    graph = generate_graph(TINY_KG)
    assert build_corpus(graph, TINY_KG.corpus, 0) == build_corpus(graph, TINY_KG.corpus, 0)


def _in_degrees(config: KGConfig) -> np.ndarray:
    graph = generate_graph(config)
    counts = Counter(f.o for f in graph.facts)
    return np.array([counts.get(e, 0) for e in graph.entities])


def test_ba_in_degrees_are_heavier_tailed_than_er():
    base = KGConfig(num_entities=1000, num_relations=10, relations_per_entity=5, seed=1)
    ba, er = _in_degrees(base), _in_degrees(dataclasses.replace(base, graph_type="er"))
    assert ba.mean() == pytest.approx(er.mean(), rel=0.01)
    assert ba.max() > 2 * er.max()
    assert ba.std() > 1.5 * er.std()


def test_corpus_lines_parse_and_cover_every_fact(tiny_kg):
    lines = read_corpus(tiny_kg.corpus_path)
    graph = read_graph_jsonl(tiny_kg.graph_path)
    bare = {line for line in lines if ";" not in line}
    assert {f.sentence() for f in graph.facts} <= bare
    chains = [parse_sentence(line) for line in lines if ";" in line]
    assert chains and all(len(c) == 2 for c in chains)
    aliased = [line for line in lines if "_alt" in line and ";" not in line]
    assert len(aliased) == round(0.5 * len(graph))
    for line in aliased:
        s, r, o = line.split()
        assert graph.object_of(s, r.removesuffix("_alt")) == o


def test_meta_json_records_parameters_and_degrees(tiny_kg):
    meta = json.loads((tiny_kg.directory / "meta.json").read_text())
    assert meta["num_facts"] == len(tiny_kg.graph)
    assert meta["config"]["num_entities"] == 30
    assert set(meta["degree"]) == {"in", "out", "total"}


def test_malformed_graph_line_names_file_and_line(tmp_path):
    path = tmp_path / "graph.jsonl"
    path.write_text('{"s": "E_0", "r": "R_0", "o": "E_1"}\n{"s": "E_1", "r": \n')
    with pytest.raises(InputError, match=r"graph.jsonl:2: malformed JSON"):
        read_graph_jsonl(path)


def test_two_objects_for_one_pair_is_named(tmp_path):
    path = tmp_path / "graph.jsonl"
    path.write_text('{"s": "E_0", "r": "R_0", "o": "E_1"}\n{"s": "E_0", "r": "R_0", "o": "E_2"}\n')
    with pytest.raises(InputError, match=r"\(E_0, R_0\) has two objects, E_1 \(line 1\) and E_2"):
        read_graph_jsonl(path)


def test_too_many_relations_per_entity_is_rejected():
    with pytest.raises(InputError, match="relations_per_entity=5 is impossible with num_relations=4"):
        KGConfig(num_relations=4, relations_per_entity=5)


def test_cli_unknown_key_exits_2_and_writes_nothing(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("graph_type: ba\nnum_entitys: 10\noutput_dir: out\n")
    assert make_kg.run_cli(make_kg.main, ["--config", str(config)]) == 2
    assert "unknown config key 'num_entitys'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_builds_a_kg(tmp_path):
    config = tmp_path / "kg.yaml"
    config.write_text("num_entities: 20\nnum_relations: 3\nrelations_per_entity: 2\nanchor_facts: []\noutput_dir: out\n")
    assert make_kg.run_cli(make_kg.main, ["--config", str(config)]) == 0
    assert len(read_graph_jsonl(tmp_path / "out" / "graph.jsonl")) == 40
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["corpus.train.txt", "graph.jsonl", "meta.json"]


def test_the_fact_split_is_seeded_shared_and_independent_of_order_and_subset():
    from src.kg.split import FactSplit

    facts = [Fact(f"E_{i:03d}", f"R_{j:02d}", "E_000") for i in range(200) for j in range(5)]
    split = FactSplit(seed=3, allowed_fraction=0.3)
    allowed = split.allowed(facts)
    assert set(allowed).isdisjoint(split.held_out(facts)) and len(allowed) + len(split.held_out(facts)) == len(facts)
    assert abs(len(allowed) / len(facts) - 0.3) < 0.05  # 1000 facts: 3 standard deviations ~ 0.043
    assert set(FactSplit(seed=3, allowed_fraction=0.3).allowed(reversed(facts[:400]))) == set(allowed) & set(facts[:400])
    assert set(FactSplit(seed=4, allowed_fraction=0.3).allowed(facts)) != set(allowed)
    assert split.allows("E_001", "R_01") == FactSplit(3, 0.3).allows("E_001", "R_01")
    with pytest.raises(InputError, match=r"allowed fraction must be in \(0, 1\), got 1.0"):
        FactSplit(allowed_fraction=1.0)


def test_a_split_seed_must_be_an_integer():
    from src.kg.split import FactSplit

    with pytest.raises(InputError, match="split seed must be an integer, got 0.0"):
        FactSplit(seed=0.0)
