"""Prompts: encoding, subject ranges, batches, greedy decoding, KG context prefixes, rewrite prompts."""
