"""The import contract of pyproject.toml ([tool.importlinter]): kg -> lm -> edit -> viz -> pipelines -> cli, each
layer importing only those below it."""

from importlinter.cli import lint_imports

from tests.conftest import REPO_ROOT


def test_layers_import_only_downwards(monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)  # where pyproject.toml holds the contract
    assert lint_imports(no_cache=True) == 0, capsys.readouterr().out
    assert "2 kept, 0 broken" in capsys.readouterr().out
