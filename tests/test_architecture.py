"""The import contract of pyproject.toml ([tool.importlinter]): layers, independent pipelines, no Kedro below them."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    # lint-imports reads pyproject.toml from the working directory and imports nothing of the project.
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


def test_a_cross_pipeline_import_breaks_the_contract(tmp_path):
    # The contract must be able to fail: a copy of the package where one pipeline imports another is refused.
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "alchemist_kedro", copy / "alchemist_kedro",
                    ignore=shutil.ignore_patterns("__pycache__"))
    nodes = copy / "alchemist_kedro" / "pipelines" / "compare" / "nodes.py"
    nodes.write_text(nodes.read_text() + "\nfrom alchemist_kedro.pipelines.rater.nodes import train_rater  # noqa\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(copy), "PATH": ""})
    assert done.returncode != 0 and "independent" in done.stdout, done.stdout[-2000:]
