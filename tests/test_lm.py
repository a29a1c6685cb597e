import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from src.cli import train_lm
from src.kg.graph import read_graph_jsonl
from src.lm.config import load_train_config
from src.lm.fact_accuracy import fact_accuracy
from src.lm.model import ModelConfig, load_model
from src.lm.tokenizer import build_word_tokenizer
from src.lm.train import encode_corpus
from src.utils.errors import InputError
from tests.conftest import REPO_ROOT


def test_tokenizer_round_trip_one_token_per_word():
    words = [f"E_{i:03d}" for i in range(50)] + ["R_00", "R_00_alt", ";"]
    tokenizer = build_word_tokenizer(words)
    text = "E_000 R_00 E_049 ; E_007 R_00_alt E_001"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.split())
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(ids) == text.split()
    assert tokenizer("E_999", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]


def test_object_only_targets_sit_on_objects():
    tokenizer = build_word_tokenizer(["a", "b", "c", "d", "r", "q", ";"])
    data = encode_corpus(["a r b", "a r b ; c q d"], tokenizer, "objects", 16)
    inputs, targets = data.buckets[2]
    assert tokenizer.convert_ids_to_tokens(inputs[0].tolist()) == ["a", "r"]
    assert targets[0].tolist() == [-100, tokenizer.convert_tokens_to_ids("b")]
    inputs, targets = data.buckets[6]
    expected = [-100, "b", -100, -100, -100, "d"]
    assert [t if t == -100 else tokenizer.convert_ids_to_tokens(t) for t in targets[0].tolist()] == expected


def test_tiny_model_learns_every_fact(tiny_trained, tiny_kg):
    model_dir, result = tiny_trained
    assert result.reached_target and result.final_accuracy == 1.0
    model, tokenizer = load_model(model_dir, device="cpu")
    assert fact_accuracy(model, tokenizer, list(tiny_kg.graph.facts)).accuracy == 1.0
    log = json.loads((model_dir / "train_log.json").read_text())
    assert log["history"] and log["seed"] == 0 and "fingerprint" in log
    assert (model_dir / "training_curve.png").stat().st_size > 1000


def test_auto_classes_load_the_saved_model(tiny_trained, tiny_kg):
    model_dir, _ = tiny_trained
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    fact = tiny_kg.graph.facts[0]
    ids = tokenizer(fact.prompt(), return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert ids.shape == (1, 2)
    with torch.no_grad():
        predicted = model(ids).logits[0, -1].argmax().item()
    assert tokenizer.convert_ids_to_tokens(predicted) == fact.o


def test_training_is_bit_reproducible(tiny_train_config, tiny_trained, tmp_path):
    import dataclasses

    from src.pipelines.train_model import train_and_save

    config = dataclasses.replace(tiny_train_config, optim=dataclasses.replace(tiny_train_config.optim, max_steps=30))
    first = train_and_save(config, tmp_path / "a", progress=False)
    second = train_and_save(config, tmp_path / "b", progress=False)
    a, _ = load_model(first.model_dir, "cpu")
    b, _ = load_model(second.model_dir, "cpu")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_train_cli_skips_when_already_trained(tiny_train_config, tiny_trained, tmp_path, capsys):
    config_path = tmp_path / "train.yaml"
    model_dir, _ = tiny_trained
    o = tiny_train_config.optim
    m = tiny_train_config.model
    config_path.write_text(
        f"kg_dir: {tiny_train_config.kg_dir}\noutput_dir: {model_dir}\nseed: 0\n"
        f"model: {json.dumps(m.to_dict())}\n"
        f"optim: {json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in o.__dict__.items()})}\n"
    )
    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert train_lm.run_cli(train_lm.main, ["--config", str(config_path), "--skip-if-trained"]) == 0
    assert "Skipping training" in capsys.readouterr().out
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_train_config_unknown_key_exits_2(tmp_path, capsys):
    config_path = tmp_path / "train.yaml"
    config_path.write_text("model:\n  n_layers: 3\n")
    assert train_lm.run_cli(train_lm.main, ["--config", str(config_path)]) == 2
    assert "unknown config key 'n_layers'" in capsys.readouterr().err


def test_default_train_config_paths_resolve_from_the_config_file():
    config = load_train_config(REPO_ROOT / "configs" / "train_gpt_small.yaml")
    assert config.output_dir == REPO_ROOT / "outputs" / "models" / "gpt_small"
    assert config.model.n_layer >= 6


def test_a_config_overlays_its_base_key_by_key(tmp_path):
    """`base: FILE`: mappings merge key by key, null replaces, paths resolve from the file that sets them."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.yaml").write_text(
        "kg_dir: kg\noutput_dir: out\nseed: 3\nmodel:\n  n_layer: 3\n  n_inner: 2048\n  activation_function: gelu\n"
        "optim:\n  lr: 0.01\n")
    (tmp_path / "overlay.yaml").write_text("base: shared/base.yaml\noutput_dir: mine\nmodel:\n  n_inner: null\n")
    config = load_train_config(tmp_path / "overlay.yaml")
    assert config.kg_dir == tmp_path / "shared" / "kg" and config.output_dir == tmp_path / "mine"
    assert (config.seed, config.model.n_layer, config.model.n_inner, config.model.activation_function) == (3, 3, None, "gelu")
    assert config.optim.lr == 0.01
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(InputError, match="a.yaml is its own base"):
        load_train_config(tmp_path / "a.yaml")
    (tmp_path / "typo.yaml").write_text("base: shared/base.yaml\nmodel:\n  n_layers: 2\n")
    with pytest.raises(InputError, match="unknown config key 'n_layers'"):
        load_train_config(tmp_path / "typo.yaml")


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO_ROOT / "configs").glob("train_*.yaml")))
def test_every_training_config_loads(name):
    config = load_train_config(REPO_ROOT / "configs" / f"{name}.yaml")
    assert config.output_dir.parent == REPO_ROOT / "outputs" / "models" and config.kg_dir == REPO_ROOT / "data" / "kg" / "ba"


@pytest.mark.parametrize("fields, message", [
    ({"model_type": "bert"}, "unknown model_type 'bert'; allowed: gpt2, gptj, gpt_neox, llama, mistral, qwen2"),
    ({"n_embd": 30, "n_head": 4}, "n_embd 30 is not a multiple of n_head 4"),
    ({"model_type": "llama", "n_head": 4, "n_kv_head": 3}, "n_head 4 is not a multiple of n_kv_head 3"),
    ({"model_type": "gpt2", "n_kv_head": 2}, "n_kv_head is for llama, mistral, qwen2; model_type 'gpt2' has one"),
])
def test_model_config_is_checked(fields, message):
    with pytest.raises(InputError, match=message):
        ModelConfig(**fields)


def test_a_missing_model_dir_is_a_clear_error_that_marks_the_model_missing(tmp_path):
    with pytest.raises(InputError, match="Model not found: .*nope has no config.json$") as raised:
        load_model(tmp_path / "nope")
    assert raised.value.missing == "model"  # the command line says how to train one (tests/test_scripts.py)


def test_missing_kg_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="KG file not found"):
        read_graph_jsonl(tmp_path / "graph.jsonl")


def test_the_default_config_is_a_gpt2_with_a_2048_wide_mlp_and_the_exact_gelu():
    default = load_train_config(REPO_ROOT / "configs" / "train_gpt_small.yaml")
    assert (default.model.model_type, default.model.inner, default.model.activation) == ("gpt2", 2048, "gelu")
    narrow, llama = (load_train_config(REPO_ROOT / "configs" / f"train_{n}.yaml") for n in ("gpt_mlp512", "llama_small"))
    assert (narrow.model.inner, narrow.model.activation) == (512, "gelu_new")
    assert (llama.model.model_type, llama.model.inner, llama.model.activation) == ("llama", 512, "silu")


def test_flop_counter_counts_block_matrices_attention_and_the_output_layer():
    from src.lm.flops import FlopCounter
    from tests.tiny_models import tiny_gpt2, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer, n_layer=2, n_embd=32, n_inner=128)
    counter = FlopCounter.of(model)
    per_block = 32 * 96 + 32 * 32 + 32 * 128 + 128 * 32  # c_attn, attn c_proj, c_fc, mlp c_proj (by hand)
    vocab = len(tokenizer)
    assert (counter.block_weights, counter.num_layers, counter.hidden, counter.vocab) == (2 * per_block, 2, 32, vocab)
    lines, length, selected = 3, 4, 2
    forward = 2 * 2 * per_block * lines * length + 4 * 2 * 32 * length * lines * length + 2 * 32 * vocab * selected
    assert counter.forward(lines, length, selected) == forward
    assert counter.step(lines, length, selected) == 3 * forward


def test_an_optimiser_option_at_its_default_keeps_the_training_fingerprint(tiny_train_config):
    """An option at its default is left out of the fingerprint (the literal: the tiny config's fingerprint hashed
    without embedding_lr_scale), so a model trained from the config is not retrained; set, it changes it."""
    import dataclasses

    from src.pipelines.train_model import training_fingerprint

    assert training_fingerprint(tiny_train_config) == \
        "bf711a3e54bba3de6b71d57e96e310a8f9f9ed3ad3a630f0e8c68cbc21679c14"
    scaled = dataclasses.replace(tiny_train_config,
                                 optim=dataclasses.replace(tiny_train_config.optim, embedding_lr_scale=3.0))
    assert training_fingerprint(scaled) != training_fingerprint(tiny_train_config)


def test_embedding_lr_scale_multiplies_the_embeddings_first_adam_step(tiny_train_config):
    """Adam's first step moves every weight with a gradient by lr x warm-up factor (1 / warmup_steps) up to eps:
    the embeddings by embedding_lr_scale times that, every other matrix by that."""
    import dataclasses

    from src.lm.model import build_model
    from src.lm.tokenizer import build_kg_tokenizer, corpus_words
    from src.kg.corpus import read_corpus
    from src.lm.train import train_model

    kg = tiny_train_config.kg_dir
    lines = read_corpus(kg / "corpus.train.txt")
    tokenizer = build_kg_tokenizer("word", lines, corpus_words(lines), 0, False)
    optim = dataclasses.replace(tiny_train_config.optim, max_steps=1, embedding_lr_scale=3.0, warmup_steps=4)
    torch.manual_seed(0)
    model = build_model(tiny_train_config.model, tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_model(model, tokenizer, lines, list(read_graph_jsonl(kg / "graph.jsonl").facts), optim, seed=0,
                progress=False)
    step = optim.lr / optim.warmup_steps
    moved = {name: float((p.detach() - before[name]).abs().max()) for name, p in model.named_parameters()}
    assert moved["transformer.wte.weight"] == pytest.approx(3 * step, rel=1e-3)
    assert moved["transformer.wpe.weight"] == pytest.approx(3 * step, rel=1e-3)
    assert moved["transformer.h.0.mlp.c_fc.weight"] == pytest.approx(step, rel=1e-3)
    with pytest.raises(InputError, match="embedding_lr_scale must be > 0, got 0"):
        dataclasses.replace(optim, embedding_lr_scale=0.0)
