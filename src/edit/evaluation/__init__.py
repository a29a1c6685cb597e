"""Edit requests and the metrics of edits."""
