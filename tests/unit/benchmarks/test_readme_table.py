"""The README's benchmark table is the committed JSON's, rendered: a changed figure fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer

from benchmarks import readme_table
from benchmarks.readme_table import END, README, RESULTS_DIR, START, differences, load_results, render


def test_readme_table_matches_the_results() -> None:
    diff = differences(README.read_text(), load_results(RESULTS_DIR))
    assert not diff, (
        "README.md's benchmark table differs from benchmarks/results/*.json; "
        "run `python -m benchmarks.readme_table --write`:\n" + "\n".join(diff)
    )


@pytest.fixture
def copies(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of README.md and of the results, to change without touching the real ones."""
    results = tmp_path / "results"
    shutil.copytree(RESULTS_DIR, results)
    readme = tmp_path / "README.md"
    shutil.copy(README, readme)
    return readme, results


def _change(results: Path, name: str, key: str, value: object) -> None:
    path = results / f"{name}.json"
    record = json.loads(path.read_text())
    record["metrics"][key] = value
    record["metrics"].pop(f"{key}_runs", None)  # a single-run figure: no range in the cell
    path.write_text(json.dumps(record))


def test_a_changed_figure_fails_the_check_and_write_fixes_it(
    copies: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    readme, results = copies
    readme_table.main(check=True, readme=readme, results_dir=results)  # the copies agree

    _change(results, "simulate", "simulate_1m_seconds", 41.7)
    with pytest.raises(typer.Exit) as failed:
        readme_table.main(check=True, readme=readme, results_dir=results)
    assert failed.value.exit_code == 1
    assert "+| simulate 1,000,000 transactions" in capsys.readouterr().out
    assert "41.7 s" in "\n".join(differences(readme.read_text(), load_results(results)))

    before = readme.read_text()
    readme_table.main(write=True, readme=readme, results_dir=results)
    after = readme.read_text()
    assert "`simulate_1m_seconds` **41.7 s** (met)" in after
    # only the section between the markers changed
    assert before.split(START)[0] == after.split(START)[0]
    assert before.split(END)[1] == after.split(END)[1]
    readme_table.main(check=True, readme=readme, results_dir=results)


def test_a_readme_without_markers_fails(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no table\n")
    with pytest.raises(ValueError, match="benchmarks:start"):
        readme_table.main(check=True, readme=readme, results_dir=RESULTS_DIR)


def _record(metrics: dict[str, object], code: dict[str, object] | None = None) -> dict[str, object]:
    record: dict[str, object] = {"benchmark": "score", "metrics": metrics}
    if code is not None:
        record["code"] = code
    return record


def _row(table: str, start: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"| {start}"))


def test_keys_render_only_when_present_and_rows_without_keys_are_left_out() -> None:
    table = render({"score": _record({"score_p99_ms_at_500rps": 4.2})})
    row = _row(table, "`POST /v1/score`, open loop 500")
    assert "`score_p99_ms_at_500rps` **4.20 ms** (met)" in row
    assert "score_errors_at_500rps" not in row
    assert "1,000 req/s for 60 s" not in table  # no score_*_at_1000rps keys
    assert "simulate" not in table  # no simulate.json


def test_dicts_runs_and_every_run_targets() -> None:
    metrics = {
        "score_p99_ms_at_1000rps": 4.0,
        "score_p99_ms_at_1000rps_runs": [3.1, 4.0, 6.2],
        "score_at_1000rps_decision_mix": {"approve": 0.971, "review": 0.026, "decline": 0.003},
        "score_at_1000rps_card_history_share": 0.98,
    }
    row = _row(render({"score": _record(metrics)}), "`POST /v1/score`, open loop 1,000")
    assert "**4.00 ms** (3 runs: 3.10 ms – 6.20 ms; **missed**)" in row  # 6.2 ms misses p99 ≤ 5 ms
    assert "approve 97.1 %, review 2.6 %, decline 0.3 %" in row
    assert "`score_at_1000rps_card_history_share` 98.0 %" in row


@pytest.mark.parametrize(
    ("code", "cell"),
    [
        (None, "—"),
        ({"commit": None, "dirty": None, "modified": None}, "unknown (no git)"),
        ({"commit": "0123456789abcdef", "dirty": False, "modified": []}, "`0123456`"),
        ({"commit": "0123456789abcdef", "dirty": True, "modified": ["core/x.py"]}, "`0123456` dirty"),
    ],
)
def test_the_commit_each_figure_came_from(code: dict[str, object] | None, cell: str) -> None:
    row = _row(render({"score": _record({"score_saturation_rps": 2100.0}, code)}), "one scoring process")
    assert row.endswith(f"| {cell} |")
    assert "**2,100 req/s** (met)" in row
