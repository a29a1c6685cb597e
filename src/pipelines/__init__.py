"""The application layer: runs that load models, write run directories, plot and shard (locate a sample of facts,
edit one fact, evaluate methods over many edits, train a model). Only src/cli and the top-level scripts import it."""
