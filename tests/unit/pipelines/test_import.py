"""`fraudctl import`: a user's file becomes the dataset layout, or nothing is written at all."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from core.dataset import read_labels, read_manifest, read_transactions
from core.events import LABEL_ARROW_SCHEMA, TRANSACTION_ARROW_SCHEMA
from core.settings import get_settings
from pipelines.import_transactions import ImportValidationError, cli, import_transactions, parse_mapping

HEADER = ["id", "ts", "card", "shop", "amt", "fraud", "reported", "country", "chan"]
ROWS = [
    # Row 2 is naive (taken as UTC) after an aware row: pandas alone would give it +02:00.
    ["007", "2026-01-05T12:00:00+02:00", "c1", "m1", "12.50", "0", "", "us", "online"],
    ["008", "2026-01-05 10:00:00", "c1", "m2", "99.99", "1", "2026-01-20T08:00:00Z", "DE", "pos"],
    ["NA", "2026-01-06T10:00:00Z", "c2", "m1", "5", "yes", "", "", ""],
    ["010", "01/31/2026 13:05", "c3", "m3", "1e3", "False", "", "", ""],
]
REQUIRED_MAP = {
    "transaction_id": "id",
    "event_time": "ts",
    "card_id": "card",
    "merchant_id": "shop",
    "amount": "amt",
}
MAP = {**REQUIRED_MAP, "is_fraud": "fraud", "reported_at": "reported"}
FULL_MAP = {**MAP, "merchant_country": "country", "channel": "chan"}
UTC = "UTC"


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    path.write_text("\n".join(",".join(row) for row in [header, *rows]) + "\n")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_csv_round_trips_with_defaults(tmp_path: Path) -> None:
    out = tmp_path / "data"
    summary = import_transactions(write_csv(tmp_path / "in.csv", ROWS), MAP, out, label_delay_days=10)

    tx = read_transactions(out)
    assert tx["transaction_id"].tolist() == ["007", "008", "NA", "010"]  # ids stay text, "NA" included
    assert tx["event_time"].tolist() == [
        pd.Timestamp("2026-01-05 10:00:00", tz=UTC),
        pd.Timestamp("2026-01-05 10:00:00.000001", tz=UTC),  # the tie, broken in file order
        pd.Timestamp("2026-01-06 10:00:00", tz=UTC),
        pd.Timestamp("2026-01-31 13:05:00", tz=UTC),
    ]
    assert tx["amount"].tolist() == [12.5, 99.99, 5.0, 1000.0]
    assert tx["customer_id"].tolist() == tx["card_id"].tolist() == ["c1", "c1", "c2", "c3"]
    assert tx["merchant_id"].tolist() == ["m1", "m2", "m1", "m3"]
    assert set(tx["merchant_category"]) == {"unknown"}
    assert set(tx["merchant_country"]) == {"US"}
    assert set(tx["channel"]) == {"card_present"}  # no device_id or ip_country anywhere
    assert tx["device_id"].isna().all() and tx["ip_country"].isna().all()
    assert set(tx["currency"]) == {"USD"} and set(tx["schema_version"]) == {1}
    assert tx["scenario"].tolist() == ["legit", "unknown", "unknown", "legit"]

    labels = read_labels(out)
    assert labels["transaction_id"].tolist() == ["NA", "008"]
    assert labels["card_id"].tolist() == ["c2", "c1"]
    assert labels["is_fraud"].tolist() == [True, True]
    assert labels["reported_at"].tolist() == [
        pd.Timestamp("2026-01-16 10:00:00", tz=UTC),  # event_time + 10 days
        pd.Timestamp("2026-01-20 08:00:00", tz=UTC),  # the file's reported_at
    ]
    assert set(labels["source"]) == {"chargeback"}

    manifest = read_manifest(out)
    expected = {"source": "import", "file": str(tmp_path / "in.csv"), "mapping": MAP, "rows": 4}
    expected |= {"label_delay_days": 10, "fraud_rows": 2, "transactions": 4, "labels": 2}
    assert manifest == expected and summary == expected


def test_written_parquet_has_the_event_schemas(tmp_path: Path) -> None:
    import_transactions(write_csv(tmp_path / "in.csv", ROWS), MAP, tmp_path / "data")
    for folder, schema in (("transactions", TRANSACTION_ARROW_SCHEMA), ("labels", LABEL_ARROW_SCHEMA)):
        for part in (tmp_path / "data" / folder).glob("date=*/part-0.parquet"):
            assert pq.read_schema(part).remove_metadata().equals(schema), part


def test_optional_columns_are_normalised(tmp_path: Path) -> None:
    header = [*HEADER, "cust", "cat", "dev", "ip", "cur", "src"]
    rows = [
        [*ROWS[0], "u1", "grocery", "", "", "eur", ""],
        [*ROWS[1], "", "", "", "", "", "Analyst"],
        [*ROWS[2], "u3", "", "d9", "fr", "", "customer"],  # empty channel, a device: ecommerce
        [*ROWS[3], "", "", "", "", "", ""],
    ]
    extra = {"customer_id": "cust", "merchant_category": "cat", "device_id": "dev", "ip_country": "ip"}
    mapping = {**FULL_MAP, **extra, "currency": "cur", "label_source": "src"}
    import_transactions(
        write_csv(tmp_path / "in.csv", rows, header), mapping, tmp_path / "d", default_country="gb"
    )

    tx = read_transactions(tmp_path / "d")
    assert tx["merchant_country"].tolist() == ["US", "DE", "GB", "GB"]
    assert tx["channel"].tolist() == ["ecommerce", "card_present", "ecommerce", "card_present"]
    assert tx["customer_id"].tolist() == ["u1", "c1", "u3", "c3"]
    assert tx["merchant_category"].tolist() == ["grocery", "unknown", "unknown", "unknown"]
    assert tx["device_id"].tolist() == [None, None, "d9", None]
    assert tx["ip_country"].tolist() == [None, None, "FR", None]
    assert tx["currency"].tolist() == ["EUR", "USD", "USD", "USD"]
    assert read_labels(tmp_path / "d")["source"].tolist() == ["analyst", "customer"]


def test_without_is_fraud_nothing_is_labelled(tmp_path: Path) -> None:
    import_transactions(write_csv(tmp_path / "in.csv", ROWS), REQUIRED_MAP, tmp_path / "d")
    assert set(read_transactions(tmp_path / "d")["scenario"]) == {"unknown"}
    assert read_labels(tmp_path / "d").empty


def test_equal_reported_at_are_made_unique(tmp_path: Path) -> None:
    rows = [[*row] for row in ROWS]
    rows[2][6] = rows[1][6]  # two fraud labels reported at the same instant
    import_transactions(write_csv(tmp_path / "in.csv", rows), MAP, tmp_path / "d")
    reported = read_labels(tmp_path / "d")["reported_at"]
    assert (reported.iloc[1] - reported.iloc[0]) == pd.Timedelta(microseconds=1)


def test_a_label_never_precedes_its_tie_broken_transaction(tmp_path: Path) -> None:
    rows = [[*row] for row in ROWS]
    rows[1][6] = "2026-01-05T10:00:00Z"  # reported at its event_time, which ties with row 1's
    import_transactions(write_csv(tmp_path / "in.csv", rows), MAP, tmp_path / "d")
    tx = read_transactions(tmp_path / "d").set_index("transaction_id")
    label = read_labels(tmp_path / "d").set_index("transaction_id").loc["008"]
    assert (
        label["reported_at"]
        == tx.loc["008", "event_time"]
        == pd.Timestamp("2026-01-05 10:00:00.000001", tz=UTC)
    )


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_typed_parquet_input(tmp_path: Path, suffix: str) -> None:
    frame = pd.DataFrame(
        {
            "id": [3, 1, 2],  # integer ids become text
            "ts": pd.to_datetime(["2026-02-01 09:00", "2026-02-01 08:00", "2026-02-02 08:00"]),  # naive
            "card": ["c1", "c2", "c1"],
            "shop": ["m1", "m1", "m2"],
            "amt": [10.0, 20.5, 3.25],
            "fraud": [False, True, False],
        }
    )
    frame.to_parquet(tmp_path / f"in{suffix}")
    mapping = {**REQUIRED_MAP, "is_fraud": "fraud"}
    import_transactions(tmp_path / f"in{suffix}", mapping, tmp_path / "d", label_delay_days=1.5)

    tx = read_transactions(tmp_path / "d")
    assert tx["transaction_id"].tolist() == ["1", "3", "2"]
    assert tx["event_time"].iloc[0] == pd.Timestamp("2026-02-01 08:00", tz=UTC)
    assert tx["amount"].tolist() == [20.5, 10.0, 3.25]
    labels = read_labels(tmp_path / "d")
    assert labels["transaction_id"].tolist() == ["1"]
    assert labels["reported_at"].tolist() == [pd.Timestamp("2026-02-02 20:00", tz=UTC)]


def test_gzipped_csv(tmp_path: Path) -> None:
    pd.DataFrame(ROWS, columns=HEADER).to_csv(tmp_path / "in.csv.gz", index=False)
    import_transactions(tmp_path / "in.csv.gz", MAP, tmp_path / "d")
    assert read_transactions(tmp_path / "d")["transaction_id"].tolist() == ["007", "008", "NA", "010"]


# Bad cells: (edits as (1-based row, file column, value), expected column, row, part of the reason)
BAD_ROWS = {
    "empty required value": ([(3, "card", "")], "card", 3, "card_id is empty"),
    "unparsable timestamp": ([(2, "ts", "yesterday")], "ts", 2, "cannot parse timestamp 'yesterday'"),
    "negative amount": ([(4, "amt", "-3.5")], "amt", 4, "amount must be > 0 (got -3.5)"),
    "zero amount": ([(1, "amt", "0")], "amt", 1, "amount must be > 0 (got 0)"),
    "non-numeric amount": ([(2, "amt", "12.5o")], "amt", 2, "amount is not a number (got '12.5o')"),
    "duplicate id": ([(4, "id", "008")], "id", 4, "duplicate transaction_id '008' (also in row 2)"),
    "bad country": ([(2, "country", "USA")], "country", 2, "must be an ISO 3166-1 alpha-2 country code"),
    "bad channel": ([(1, "chan", "atm")], "chan", 1, "channel must be one of"),
    "bad is_fraud": ([(4, "fraud", "maybe")], "fraud", 4, "is_fraud must be 1/0"),
    "reported before event": (
        [(2, "reported", "2026-01-04")],
        "reported",
        2,
        "'2026-01-04' is before event_time",
    ),
    "lowest bad row wins": ([(4, "amt", "-1"), (2, "amt", "-2")], "amt", 2, "(got -2)"),
    "checks run in order": ([(1, "amt", "-1"), (3, "ts", "soon")], "ts", 3, "'soon'"),
}
# Bad --map: (mapping, expected column, part of the reason); no row.
BAD_MAPPINGS = {
    "required field not mapped": (
        {k: v for k, v in FULL_MAP.items() if k != "amount"},
        None,
        "lacks required",
    ),
    "unknown mapping target": ({**FULL_MAP, "amount_usd": "amt"}, None, "unknown field 'amount_usd'"),
    "mapped column missing": ({**FULL_MAP, "amount": "amount_usd"}, "amount_usd", "columns: id, ts, card"),
}
Case = tuple[list[tuple[int, str, str]], dict[str, str], str | None, int | None, str]
CASES: dict[str, Case] = {
    name: (edits, FULL_MAP, col, row, why) for name, (edits, col, row, why) in BAD_ROWS.items()
}
CASES |= {name: ([], mapping, col, None, why) for name, (mapping, col, why) in BAD_MAPPINGS.items()}


@pytest.mark.parametrize("preexisting", [False, True], ids=["no-out", "existing-out"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_names_column_row_reason_and_writes_nothing(
    tmp_path: Path, case: Case, preexisting: bool
) -> None:
    edits, mapping, column, row, reason = case
    rows = [[*r] for r in ROWS]
    for at, column_name, value in edits:
        rows[at - 1][HEADER.index(column_name)] = value
    out = tmp_path / "data"
    if preexisting:
        import_transactions(write_csv(tmp_path / "good.csv", ROWS), MAP, out)
    before = snapshot(tmp_path)
    write_csv(tmp_path / "in.csv", rows)

    with pytest.raises(ImportValidationError) as caught:
        import_transactions(tmp_path / "in.csv", mapping, out)
    error = caught.value
    assert (error.column, error.row) == (column, row)
    assert reason in error.reason and reason in str(error)
    assert out.exists() == preexisting
    assert {k: v for k, v in snapshot(tmp_path).items() if k != "in.csv"} == before  # no staging left


def test_error_message_is_one_line_naming_column_and_row() -> None:
    error = ImportValidationError("amt", 17, "amount must be > 0 (got -3.5)")
    assert str(error) == "column 'amt' row 17: amount must be > 0 (got -3.5)"
    assert str(ImportValidationError(None, None, "x.csv not found")) == "x.csv not found"


def test_parse_mapping() -> None:
    spec = " transaction_id = id ,event_time=ts,card_id=card,merchant_id=shop,amount=a=b, "
    assert parse_mapping(spec) == {**REQUIRED_MAP, "amount": "a=b"}
    for bad, reason in [
        (spec + ",amount=x", "'amount' twice"),
        (spec + ",colour=x", "unknown field 'colour'"),
        ("transaction_id=id,event_time=ts", "lacks required field(s): card_id, merchant_id, amount"),
        (spec + ",is_fraud", "'is_fraud' is not FIELD=COLUMN"),
    ]:
        with pytest.raises(ImportValidationError) as caught:
            parse_mapping(bad)
        assert reason in caught.value.reason and caught.value.row is None


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(cli)
    return app


def test_cli_bad_input_exits_1_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    rows = [[*r] for r in ROWS]
    rows[3][4] = "-3.5"
    spec = ",".join(f"{k}={v}" for k, v in FULL_MAP.items())
    args = [str(write_csv(tmp_path / "in.csv", rows)), "--map", spec, "--out", str(tmp_path / "d")]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 1
    assert result.stderr == "error: column 'amt' row 4: amount must be > 0 (got -3.5)\n"
    assert not (tmp_path / "d").exists()


def test_cli_good_input_exits_0(tmp_path: Path) -> None:
    spec = ",".join(f"{k}={v}" for k, v in FULL_MAP.items())
    args = [str(write_csv(tmp_path / "in.csv", ROWS)), "--map", spec, "--out", str(tmp_path / "d")]
    result = CliRunner().invoke(_app(), [*args, "--label-delay-days", "7", "--default-country", "FR"])
    assert result.exit_code == 0, result.output
    assert "imported 4 transactions (2 fraud" in result.stdout
    assert read_manifest(tmp_path / "d")["label_delay_days"] == 7
    assert read_transactions(tmp_path / "d")["merchant_country"].tolist() == ["US", "DE", "FR", "FR"]


def test_cli_writes_to_the_settings_data_dir_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRAUD_DATA_DIR", str(tmp_path / "default"))
    get_settings.cache_clear()
    try:
        spec = ",".join(f"{k}={v}" for k, v in MAP.items())
        result = CliRunner().invoke(_app(), [str(write_csv(tmp_path / "in.csv", ROWS)), "--map", spec])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "default")["rows"] == 4


def test_cli_help_has_an_example() -> None:
    result = CliRunner().invoke(_app(), ["--help"])
    assert result.exit_code == 0 and "fraudctl import" in result.output and "--map" in result.output
