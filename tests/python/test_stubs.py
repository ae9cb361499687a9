"""The package's .pyi stubs describe every public name of what was built."""

from __future__ import annotations

import subprocess
import sys


def test_stubs_match_the_package(tmp_path):
    config = tmp_path / "mypy.ini"
    # pyarrow ships no type information; the stubs only name its Table.
    config.write_text("[mypy]\nignore_missing_imports = True\n")
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "busbar", "--mypy-config-file", str(config)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
