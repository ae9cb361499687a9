"""Every ```python block of docs/python.md, docs/security.md, docs/mesh.md and
of the README runs as written.

Each block runs as its own script, in a directory holding a real node's
data as ./busbar-data (so "busbar-data/admin.json" is found, as after
`make run`), with a fresh node per document.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, clean_env

DOCUMENTS = [REPO_ROOT / "docs" / "python.md", REPO_ROOT / "README.md",
             REPO_ROOT / "docs" / "security.md", REPO_ROOT / "docs" / "mesh.md"]
BLOCK_TIMEOUT_S = 60


# Blocks that need resources made first; test_readme.py runs them with that setup.
RUN_ELSEWHERE = ("flight-sql", "flight-series")


def python_blocks(path: Path) -> list[str]:
    text = path.read_text()
    for marker in RUN_ELSEWHERE:
        text = re.sub(rf"<!-- {marker}:begin -->.*?<!-- {marker}:end -->", "", text,
                      flags=re.DOTALL)
    return re.findall(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text,
                      flags=re.MULTILINE | re.DOTALL)


def test_the_documents_have_examples():
    assert len(python_blocks(DOCUMENTS[0])) >= 10
    assert len(python_blocks(DOCUMENTS[1])) >= 2
    assert len(python_blocks(DOCUMENTS[3])) >= 3


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_python_examples_run(document, tmp_path, busbar_node_at):
    workdir = tmp_path / "work"
    workdir.mkdir()
    node = busbar_node_at(workdir / "busbar-data")
    for number, block in enumerate(python_blocks(document), 1):
        script = tmp_path / f"example_{number}.py"
        script.write_text(block)
        result = subprocess.run([sys.executable, str(script)], cwd=workdir, env=clean_env(),
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=BLOCK_TIMEOUT_S)
        assert result.returncode == 0, (
            f"{document.name}: python example {number} failed\n--- example ---\n{block}"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}\n"
            f"--- node stderr ---\n{node.stderr()}")
