"""Execute notebooks/quickstart.ipynb on the tiny model so that it never goes stale."""

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO_ROOT


def test_quickstart_notebook_runs(tiny_trained, tiny_kg, tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKSTART_MODEL_DIR", str(tiny_trained[0]))
    monkeypatch.setenv("QUICKSTART_CORPUS", str(tiny_kg.corpus_path))
    monkeypatch.setenv("QUICKSTART_RELATION", "R_01")
    monkeypatch.setenv("QUICKSTART_TARGET", "E_005")
    monkeypatch.setenv("QUICKSTART_DEVICE", "cpu")
    monkeypatch.setenv("KG_ROME_CACHE", str(tmp_path / "cache"))
    notebook = nbformat.read(REPO_ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}})
    try:
        client.execute()
    except Exception as exc:  # noqa: BLE001 - show the failing cell's error, not the kernel plumbing
        pytest.fail(f"notebook failed: {str(exc)[-2000:]}")
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "Success: True" in outputs and "New prediction: E_005" in outputs
    images = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the trace heatmap is shown inline"
