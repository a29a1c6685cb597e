"""ROME's quantities, one module each, called in turn by `src.edit.rome.ROME`: the keys k* (`keys`), u and the
rank-one update (`update`), and delta, v* - out(k*) (`delta`); the key statistics C (`key_statistics`: computed and
cached; `covariance`: per layer, with earlier edits' keys, as the preconditioner u is made with), the linear algebra
ROME and MEMIT share (`linalg`) and ROME's hyperparameters (`hparams`)."""
