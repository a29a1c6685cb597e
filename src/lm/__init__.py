"""Language models on KG corpora: word-level tokenizer, GPT-2 from YAML, training and fact accuracy."""
