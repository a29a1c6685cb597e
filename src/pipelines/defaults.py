"""The repository's default inputs and outputs, relative to the repository root: what the scripts and the build
commands use when no path is given (the scripts make them absolute, so any working directory works)."""

KG_CONFIG = "configs/kg_ba.yaml"
TRAIN_CONFIG = "configs/train_gpt_small.yaml"
KG_FILE = "data/kg/ba/graph.jsonl"
KG_CORPUS = "data/kg/ba/corpus.train.txt"
MODEL_DIR = "outputs/models/gpt_small"
ROME_HPARAMS = "configs/rome_gpt_small.yaml"
