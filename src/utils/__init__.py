"""Small helpers shared by every layer: errors, atomic file writes, config loading, devices."""
