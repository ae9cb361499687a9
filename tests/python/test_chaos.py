"""A few kill -9 cycles of the chaos run (tests/python/chaos.py) under the
test suite; `make chaos` runs many more."""

from chaos import run_chaos


def test_kill_9_under_write_load_loses_nothing_acknowledged(tmp_path):
    cycles, checked = run_chaos(tmp_path, cycles=3, writers=3, seed=7)
    assert cycles == 3
    assert checked > 0, "the writers got no write acknowledged at all"
