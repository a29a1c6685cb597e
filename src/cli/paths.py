"""Default locations of the repository's data and outputs, independent of the working directory."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def repo_path(relative: str) -> str:
    """Absolute path of `relative` inside the repository (for CLI defaults; user-given paths stay as given)."""
    return str(REPO_ROOT / relative)
