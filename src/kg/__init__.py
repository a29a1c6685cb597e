"""Knowledge graphs: generation ("ba", "er"), graph.jsonl I/O, and the training corpus."""
