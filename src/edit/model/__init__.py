"""Model plumbing: module access by family, hooks, calling blocks by hand, resumed forwards, speed paths."""
