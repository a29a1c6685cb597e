"""ROME's quantities, one module each, called in turn by `src.edit.rome.ROME`: the keys k* (`keys`), u and the
rank-one update (`update`), and delta, v* - out(k*) (`delta`)."""
