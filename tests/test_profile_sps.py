"""`python -m sglang_dspark.profile_sps` writes the SPS table the server's --speculative-dspark-sps-table-path reads."""

from __future__ import annotations

from sglang_dspark.profile_sps import main
from sglang_dspark.speculative.planner import SPSTable


def test_profile_sps_writes_a_monotone_table(tmp_path, capsys):
    out = tmp_path / "sps.json"
    main(["--sizes", "4", "1", "2", "--context", "16", "--repeats", "1", "--output", str(out)])
    table = SPSTable.load(out)
    assert table.batch_tokens == (1, 2, 4)
    assert all(a >= b > 0 for a, b in zip(table.steps_per_sec, table.steps_per_sec[1:]))
    assert "SPS(4) = " in capsys.readouterr().out
