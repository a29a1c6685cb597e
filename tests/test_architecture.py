"""The import contract of pyproject.toml ([tool.importlinter]): kg -> lm -> edit -> viz -> pipelines -> cli, each
layer importing only those below it."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def test_layers_import_only_downwards():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.is_file(), f"{lint_imports} is missing: make install puts import-linter in the environment"
    completed = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "1 kept, 0 broken" in completed.stdout
