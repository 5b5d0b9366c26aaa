"""The soak (benchmarks/soak.py) at CI size: ~150 jobs across 2 simulated workers with
random cancels, client disconnects and 3 worker kills. Nothing lost, nothing stuck, nothing
run twice, nothing left in genq:running."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak import run_soak

pytestmark = pytest.mark.timeout(300)


def test_soak_ci(tmp_path: Path) -> None:
    res = run_soak(tmp_path / "soak", jobs=150, kills=3, rate=15, seed=11)
    print("\n" + res.table())
    assert res.accepted == 150 and res.kills == 3
    assert res.lost == 0 and res.stuck == 0 and res.ran_twice == 0, res.problems[:10]
    assert res.left_running == 0
    # Every accepted job is accounted for by a terminal state.
    assert sum(res.statuses.values()) == res.accepted
    assert res.statuses["cancelled"] > 0 and res.disconnects > 0
