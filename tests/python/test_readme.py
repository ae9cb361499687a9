"""The README's tour must run as written against a real node.

The README marks its tour as the one ```sh block between
`<!-- tour:begin -->` and `<!-- tour:end -->`, and may mark a Rust example
between `<!-- rust-example:begin -->` and `<!-- rust-example:end -->` that
must equal crates/busbar-client/examples/tour.rs. $BUSBAR_README overrides
which README is read (default: <repo>/README.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, busbar_bin, clean_env

TOUR_TIMEOUT_S = 120
RUST_EXAMPLE = REPO_ROOT / "crates" / "busbar-client" / "examples" / "tour.rs"


def readme_path() -> Path:
    return Path(os.environ.get("BUSBAR_README") or REPO_ROOT / "README.md")


def read_readme() -> str:
    path = readme_path()
    if not path.is_file():
        pytest.fail(f"README not found at {path} (set BUSBAR_README to test another file)",
                    pytrace=False)
    return path.read_text()


def fenced_block(text: str, marker: str, lang: str) -> str | None:
    """The ```lang block between <!-- marker:begin --> and <!-- marker:end -->.

    None if the begin marker is absent; fails the test if the markers are
    there but do not enclose exactly one such block.
    """
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    where = f"{readme_path()}: {begin} ... {end}"
    if text.count(begin) == 0:
        return None
    if text.count(begin) != 1 or text.count(end) != 1:
        pytest.fail(f"{where}: expected each marker exactly once", pytrace=False)
    region = text[text.index(begin) + len(begin):]
    if end not in region:
        pytest.fail(f"{where}: end marker comes before begin marker", pytrace=False)
    region = region[:region.index(end)]
    # The fence may be ``` or longer (```` lets the block itself hold ```).
    blocks = re.findall(
        rf"^(`{{3,}})[ \t]*{re.escape(lang)}[ \t]*\n(.*?)^\1[ \t]*$",
        region, flags=re.MULTILINE | re.DOTALL,
    )
    if len(blocks) != 1:
        pytest.fail(f"{where}: expected exactly one ```{lang} block between the markers, "
                    f"found {len(blocks)}", pytrace=False)
    return blocks[0][1]


def test_readme_tour_runs(tmp_path, busbar_node_at):
    tour = fenced_block(read_readme(), "tour", "sh")
    if tour is None:
        pytest.fail(f"{readme_path()} has no <!-- tour:begin --> ```sh ... ``` "
                    "<!-- tour:end --> block", pytrace=False)
    run_shell_tour(tour, tmp_path, busbar_node_at)


def test_data_doc_tour_runs(tmp_path, busbar_node_at):
    """docs/data.md's command block runs as written; its output says what it did."""
    doc = REPO_ROOT / "docs" / "data.md"
    tour = fenced_block(doc.read_text(), "data-tour", "sh")
    assert tour is not None, f"{doc} has no <!-- data-tour:begin --> ```sh block"
    out = run_shell_tour(tour, tmp_path, busbar_node_at)
    assert "alice | 70" in out and "bob   | 30" in out, out
    assert "refused: nothing changed" in out, out
    assert "2026-03-29T01:00:00Z,0,13\n2026-03-29T02:00:00Z,2,9.75\n" in out, out
    assert "/home/admin/wind" in out and "Europe/Oslo" in out, out


def test_readme_flight_series_example_runs(tmp_path, busbar_node_at):
    """The README's Arrow Flight block runs as written, with stock pyarrow.flight."""
    example = fenced_block(read_readme(), "flight-series", "python")
    assert example is not None, f"{readme_path()} has no <!-- flight-series:begin --> block"
    node = busbar_node_at(tmp_path / "busbar-data")
    subprocess.run([str(busbar_bin()), "ts", "create", "/home/admin/solar", "--resolution", "hour"],
                   cwd=tmp_path, env=clean_env(), check=True, capture_output=True, timeout=60)
    result = run_example([sys.executable, "-c", example], tmp_path, node)
    assert "'points_written': 2" in result.stdout, result.stdout
    assert 'timestamp[ms, tz=UTC] [12.5, 13.0]' in result.stdout, result.stdout


def run_example(args: list, cwd: Path, node) -> subprocess.CompletedProcess:
    """Runs an example as a user would; fails with its output and the node's
    if it does not succeed."""
    result = subprocess.run(args, cwd=cwd, env=clean_env(), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=TOUR_TIMEOUT_S)
    assert result.returncode == 0, (f"--- stdout ---\n{result.stdout}\n--- stderr ---\n"
                                    f"{result.stderr}\n--- node ---\n{node.stderr()}")
    return result


def run_shell_tour(tour: str, tmp_path, busbar_node_at) -> str:
    """Runs a shell block where a reader would and returns its stdout."""
    # In a directory holding the node's data as ./busbar-data, so the CLI's
    # default config busbar-data/admin.json is found without --config.
    workdir = tmp_path / "tour"
    workdir.mkdir()
    node = busbar_node_at(workdir / "busbar-data")

    script = tmp_path / "tour.sh"
    script.write_text("set -euo pipefail\n" + tour)
    bin_dir = busbar_bin().parent
    env = clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    try:
        result = subprocess.run(
            ["bash", str(script)], cwd=workdir, env=env,
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=TOUR_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"README tour did not finish in {TOUR_TIMEOUT_S} s\n"
                    f"--- stdout ---\n{_text(e.stdout)}\n--- stderr ---\n{_text(e.stderr)}\n"
                    f"--- node stderr ---\n{node.stderr()}", pytrace=False)
    if result.returncode != 0:
        pytest.fail(f"README tour exited with {result.returncode}\n--- script ---\n{tour}"
                    f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}\n"
                    f"--- node stderr ---\n{node.stderr()}", pytrace=False)
    return result.stdout


def test_readme_flight_sql_example_runs(tmp_path, busbar_node_at):
    """The README's Flight SQL block runs as written, where `make run` keeps its data."""
    example = fenced_block(read_readme(), "flight-sql", "python")
    if example is None:
        pytest.fail(f"{readme_path()} has no <!-- flight-sql:begin --> ```python block",
                    pytrace=False)
    node = busbar_node_at(tmp_path / "busbar-data")
    subprocess.run([str(busbar_bin()), "db", "create", "/home/admin/flight"], cwd=tmp_path,
                   env=clean_env(), check=True, capture_output=True, timeout=60)
    result = run_example([sys.executable, "-c", example], tmp_path, node)
    assert "'sensor': 't1', 'value': 21.5" in result.stdout
    assert "'sensor': 't2', 'value': None, 'at': None" in result.stdout


def _text(out: str | bytes | None) -> str:
    # TimeoutExpired carries bytes even when run() was asked for text.
    if isinstance(out, bytes):
        return out.decode(errors="replace")
    return out or ""


def test_readme_rust_example_matches_compiled_example():
    example = fenced_block(read_readme(), "rust-example", "rust")
    if example is None:
        pytest.skip(f"{readme_path()} has no <!-- rust-example:begin --> block")
    if not RUST_EXAMPLE.is_file():
        pytest.fail(f"README has a rust-example block but {RUST_EXAMPLE} does not exist",
                    pytrace=False)
    assert example.strip() == RUST_EXAMPLE.read_text().strip(), (
        f"the README's rust-example block differs from {RUST_EXAMPLE}; "
        "copy the file into the README (or the README into the file)"
    )


def test_rust_example_runs_against_a_node(tmp_path, busbar_node_at):
    """The example the README shows also runs, not only compiles."""
    example_bin = busbar_bin().parent / "examples" / "tour"
    if not example_bin.is_file():
        pytest.fail(f"{example_bin} is missing: build it with "
                    "`cargo build -p busbar-client --examples` (make test does)", pytrace=False)
    node = busbar_node_at(tmp_path / "busbar-data")
    result = run_example([str(example_bin)], tmp_path, node)
    assert "admin sent greeting" in result.stdout
    assert "NotFound" in result.stdout
