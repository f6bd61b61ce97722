"""`fraudctl import`: a user's own CSV or parquet file into the layout `simulate` writes.

Every later stage reads one layout (core.dataset), so real data passes through here once.
The whole file is checked before anything is written: a half-imported or silently
"repaired" dataset would skew training unseen.

Defaults, where an optional field is not mapped or its cell is empty:

| field             | default                                                              |
|-------------------|----------------------------------------------------------------------|
| customer_id       | the row's card_id                                                    |
| merchant_category | "unknown"                                                            |
| merchant_country  | --default-country ("US")                                             |
| channel           | "ecommerce" if the row has a device_id or ip_country, else "card_present" |
| device_id, ip_country | null                                                             |
| currency          | "USD"                                                                |
| label_source      | "chargeback"                                                         |
| reported_at       | event_time + --label-delay-days (30)                                 |
| is_fraud          | unknown: no label row, scenario "unknown"                            |

is_fraud true gives one label row and scenario "unknown" (real data has no simulator
scenario); false gives no label and scenario "legit".

Reading: CSV cells are text (ids keep leading zeros; only empty cells are null, "NA" is a
string), stripped. Rows in errors count data rows from 1 (row 1 follows the CSV header).
Timestamps are ISO-8601, else a format inferred from the first other value ("01/31/2026
13:05"), else parsed one by one; naive ones are taken as UTC, others converted to UTC.
Ties in event_time, and in label reported_at, are broken by +1 µs in file order
(core.dataset.make_timestamps_unique). Codes are upper-cased; channel accepts synonyms
(CHANNELS: online/ecom/cnp → ecommerce, pos/chip/cp → card_present); is_fraud takes
1/0, true/false, yes/no, t/f in any case.

Checks, in order; the first failing one raises ImportValidationError for its lowest row:

1. --map: known fields, none twice, every required one.
2. The file: readable, not empty, holds every mapped column.
3. Required values non-empty; ids <= 64 characters, merchant_category <= 32 (the event schema's).
4. transaction_id unique (the error names the later row and the earlier one).
5. event_time parses.
6. amount is a number, > 0 and <= 1,000,000 (the event schema's bounds).
7. merchant_country, ip_country (ISO 3166-1 alpha-2), currency (ISO 4217), channel, is_fraud, label_source.
8. reported_at parses and is not before event_time.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, get_args

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.markup import escape

from core.dataset import make_timestamps_unique, write_dataset
from core.events import LEGIT_SCENARIO, SCHEMA_VERSION, UNKNOWN_SCENARIO, LabelSource
from core.iso_codes import COUNTRIES, CURRENCIES
from core.settings import get_settings

REQUIRED = ("transaction_id", "event_time", "card_id", "merchant_id", "amount")
OPTIONAL: tuple[str, ...] = ("is_fraud", "reported_at", "customer_id", "merchant_category")
OPTIONAL += ("merchant_country", "channel", "device_id", "ip_country", "currency", "label_source")
MAX_LENGTH = dict.fromkeys(["transaction_id", "card_id", "customer_id", "merchant_id", "device_id"], 64)
MAX_LENGTH["merchant_category"] = 32
MAX_AMOUNT = 1_000_000.0
CHANNELS = dict.fromkeys(["card_present", "card-present", "pos", "chip", "cp", "in_store"], "card_present")
CHANNELS |= dict.fromkeys(["ecommerce", "e-commerce", "online", "ecom", "cnp", "web"], "ecommerce")
BOOLS = {"1": True, "true": True, "yes": True, "t": True, "0": False, "false": False, "no": False, "f": False}
SOURCES = get_args(LabelSource)
# field: (case, accepted: a pattern or a table of synonyms, what the error says)
RULES: dict[str, tuple[str, str | dict[str, Any], str]] = {
    "merchant_country": ("upper", {c: c for c in COUNTRIES}, "an ISO 3166-1 alpha-2 country code"),
    "ip_country": ("upper", {c: c for c in COUNTRIES}, "an ISO 3166-1 alpha-2 country code"),
    "currency": ("upper", {c: c for c in CURRENCIES}, "an ISO 4217 currency code"),
    "channel": ("lower", CHANNELS, f"one of {', '.join(CHANNELS)}"),
    "is_fraud": ("lower", BOOLS, "1/0, true/false, yes/no or t/f"),
    "label_source": ("lower", {s: s for s in SOURCES}, f"one of {', '.join(SOURCES)}"),
}
# An explicit UTC offset after a time of day ("10:00:00Z", "10:00+02:00").
_OFFSET = r"\d:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"


class ImportValidationError(ValueError):
    """The file or the mapping cannot be imported; says where (column, 1-based row) and why."""

    def __init__(self, column: str | None, row: int | None, reason: str) -> None:
        self.column, self.row, self.reason = column, row, reason
        where = " ".join(p for p in (column and f"column {column!r}", row and f"row {row}") if p)
        super().__init__(f"{where}: {reason}" if where else reason)


def parse_mapping(spec: str) -> dict[str, str]:
    """Parse ``--map``: ``field=COLUMN,field=COLUMN`` (a column name may contain ``=``).

    Returns:
        Target field → column of the file.

    Raises:
        ImportValidationError: malformed pair, unknown or repeated field, required field missing.
    """
    mapping: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in spec.split(","))):
        target, sep, column = (part.strip() for part in pair.partition("="))
        if not (sep and target and column):
            raise ImportValidationError(None, None, f"--map entry {pair!r} is not FIELD=COLUMN")
        if target in mapping:
            raise ImportValidationError(None, None, f"--map names field {target!r} twice")
        mapping[target] = column
    _check_targets(mapping)
    return mapping


def _check_targets(mapping: dict[str, str]) -> None:
    unknown = [t for t in mapping if t not in REQUIRED + OPTIONAL]
    if unknown:
        known = ", ".join(REQUIRED + OPTIONAL)
        raise ImportValidationError(None, None, f"unknown field {unknown[0]!r} in --map (known: {known})")
    missing = [t for t in REQUIRED if t not in mapping]
    if missing:
        raise ImportValidationError(None, None, f"--map lacks required field(s): {', '.join(missing)}")


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    name = path.name.lower()
    parquet, csv = name.endswith((".parquet", ".pq")), name.endswith((".csv", ".csv.gz"))
    if not (parquet or csv):
        raise ImportValidationError(None, None, f"{path}: not .csv, .csv.gz, .parquet or .pq")
    if not path.is_file():
        raise ImportValidationError(None, None, f"{path} not found")
    try:  # ParserError, EmptyDataError and UnicodeDecodeError are ValueErrors
        available = pq.read_schema(path).names if parquet else list(pd.read_csv(path, nrows=0).columns)
        missing = [c for c in columns if c not in available]
        if missing:
            frame = None
        elif parquet:
            frame = pd.read_parquet(path, columns=columns)
        else:  # text only, and only empty cells null, so ids such as "007" or "NA" survive
            frame = pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ImportValidationError(None, None, f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
    if frame is None:
        raise ImportValidationError(missing[0], None, f"not in the file (columns: {', '.join(available)})")
    return frame.reset_index(drop=True)


def _text(values: pd.Series) -> pd.Series:
    """Stripped strings, empty as NA; integral floats (parquet ints with nulls) print without '.0'."""
    if pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all():
        values = values.astype("Int64")
    text = values.astype("string[pyarrow]").str.strip()  # arrow: vectorised str ops
    return text.mask(text == "")


def _parse_times(values: pd.Series) -> pd.Series:
    """UTC timestamps; NaT where a cell is empty or does not parse."""
    if pd.api.types.is_datetime64_any_dtype(values):  # a typed parquet column
        return values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    text = _text(values)
    parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
    # pandas 2.3's ISO8601 parser gives a naive value the offset of the aware one before it,
    # so values with and without an offset are parsed apart.
    aware = text.str.contains(_OFFSET, regex=True).fillna(False).to_numpy(dtype=bool)
    for part in (aware, ~aware & text.notna().to_numpy()):
        if part.any():
            parsed[part] = pd.to_datetime(text[part], format="ISO8601", utc=True, errors="coerce")
    # Then the format pandas infers from the first leftover (vectorised), then value by value.
    for fmt in (None, "mixed"):
        left = (parsed.isna() & text.notna()).to_numpy()
        if left.any():
            with warnings.catch_warnings():  # "could not infer format" is expected here
                warnings.simplefilter("ignore", UserWarning)
                parsed[left] = pd.to_datetime(text[left], format=fmt, utc=True, errors="coerce")
    return parsed


def _validate(raw: pd.DataFrame, mapping: dict[str, str]) -> dict[str, pd.Series]:
    """Checks 3-8 of the module docstring; returns every mapped field normalised, NA where empty."""
    cells = {t: _text(raw[c]) for t, c in mapping.items()}  # as read: what errors quote
    values = dict(cells)

    def check(target: str, bad: pd.Series | np.ndarray, reason: str) -> None:
        flags = pd.Series(bad).to_numpy(dtype=bool, na_value=False)
        if flags.any():  # the lowest bad row; {value} in the reason is its cell
            i = int(flags.argmax())
            raise ImportValidationError(mapping[target], i + 1, reason.format(value=cells[target].iloc[i]))

    for target in REQUIRED:
        check(target, cells[target].isna(), f"{target} is empty")
    for target, limit in MAX_LENGTH.items():
        if target in cells:
            reason = f"{target} longer than {limit} characters: {{value!r}}"
            check(target, cells[target].str.len() > limit, reason)
    ids = cells["transaction_id"]
    repeated = ids.duplicated().to_numpy()
    if repeated.any():
        row = int(repeated.argmax())
        first = int((ids == ids.iloc[row]).to_numpy(dtype=bool).argmax())
        reason = f"duplicate transaction_id {ids.iloc[row]!r} (also in row {first + 1})"
        raise ImportValidationError(mapping["transaction_id"], row + 1, reason)
    values["event_time"] = _parse_times(raw[mapping["event_time"]])
    check("event_time", values["event_time"].isna(), "cannot parse timestamp {value!r}")
    amount = raw[mapping["amount"]]
    if not pd.api.types.is_numeric_dtype(amount):
        amount = pd.to_numeric(cells["amount"], errors="coerce")
    values["amount"] = amount = pd.Series(amount.to_numpy(dtype="float64", na_value=np.nan))
    check("amount", amount.isna(), "amount is not a number (got {value!r})")
    check("amount", amount <= 0, "amount must be > 0 (got {value})")
    check("amount", amount > MAX_AMOUNT, "amount must be <= 1,000,000 (got {value})")
    for target, (case, accepted, what) in RULES.items():
        if target in cells:
            cased = cells[target].str.upper() if case == "upper" else cells[target].str.lower()
            if isinstance(accepted, str):
                values[target] = cased.where(cased.str.fullmatch(accepted).fillna(False))
            else:
                values[target] = cased.map(accepted)
            bad = cells[target].notna() & values[target].isna()
            check(target, bad, f"{target} must be {what} (got {{value!r}})")
    if "reported_at" in mapping:
        values["reported_at"] = reported = _parse_times(raw[mapping["reported_at"]])
        bad = reported.isna() & cells["reported_at"].notna()
        check("reported_at", bad, "cannot parse timestamp {value!r}")
        check("reported_at", reported < values["event_time"], "reported_at {value!r} is before event_time")
    return values


def _build(values: dict[str, pd.Series], country: str, delay_days: float) -> tuple[pd.DataFrame, ...]:
    """Transactions and labels, defaults applied (the table in the module docstring)."""
    index = values["transaction_id"].index

    def field(target: str, default: object) -> pd.Series:
        given = values.get(target)
        if given is None:
            return pd.Series(default, index=index)
        return given if default is None else given.fillna(default)

    online = field("device_id", None).notna() | field("ip_country", None).notna()
    by_device = pd.Series(np.where(online, "ecommerce", "card_present"), index=index)
    fraud = field("is_fraud", None)
    event_time = make_timestamps_unique(values["event_time"])
    tx = pd.DataFrame(
        {
            "transaction_id": values["transaction_id"],
            "event_time": event_time,
            "card_id": values["card_id"],
            "customer_id": field("customer_id", values["card_id"]),
            "merchant_id": values["merchant_id"],
            "merchant_category": field("merchant_category", "unknown"),
            "merchant_country": field("merchant_country", country),
            "channel": field("channel", by_device),
            "device_id": field("device_id", None),
            "ip_country": field("ip_country", None),
            "amount": values["amount"],
            "currency": field("currency", "USD"),
            "schema_version": np.int32(SCHEMA_VERSION),
            "scenario": np.where(fraud.eq(False), LEGIT_SCENARIO, UNKNOWN_SCENARIO),
        }
    )
    is_fraud = fraud.eq(True).to_numpy(dtype=bool)
    reported = field("reported_at", values["event_time"] + pd.Timedelta(days=delay_days))
    labels = pd.DataFrame(
        {
            "transaction_id": tx["transaction_id"][is_fraud],
            "card_id": tx["card_id"][is_fraud],
            "is_fraud": True,
            # Tie-breaking may move event_time up by microseconds: never report before it.
            "reported_at": reported.where(reported >= event_time, event_time)[is_fraud],
            "source": field("label_source", "chargeback").astype(object)[is_fraud],
        }
    )
    labels["reported_at"] = make_timestamps_unique(labels["reported_at"])
    return tx.sort_values("event_time", kind="stable", ignore_index=True), labels


def import_transactions(
    path: Path, mapping: dict[str, str], out: Path, label_delay_days: float = 30, default_country: str = "US"
) -> dict[str, Any]:
    """Validate a CSV/parquet file in full, then write it as a dataset at ``out``.

    Args:
        path: ``.csv``, ``.csv.gz``, ``.parquet`` or ``.pq`` file.
        mapping: target field → column of the file (see ``parse_mapping``).
        out: dataset folder; replaced on success, untouched (not even created) on failure.
        label_delay_days: days from a fraud transaction to its label where no reported_at is given.
        default_country: merchant_country for rows without one.

    Returns:
        The manifest written, with the transaction and label counts.

    Raises:
        ImportValidationError: the first problem found, in the order of the module docstring.
    """
    _check_targets(mapping)
    country = default_country.strip().upper()
    if country not in COUNTRIES:
        raise ImportValidationError(
            None, None, f"default country must be an ISO 3166-1 alpha-2 code, not {default_country!r}"
        )
    if not 0 <= label_delay_days <= 3650:  # also rejects NaN
        raise ImportValidationError(None, None, f"label delay must be 0-3650 days (got {label_delay_days})")
    raw = _read(Path(path), list(dict.fromkeys(mapping.values())))
    if raw.empty:
        raise ImportValidationError(None, None, f"{path} has no data rows")
    tx, labels = _build(_validate(raw, mapping), country, label_delay_days)
    manifest = {"source": "import", "file": str(path), "mapping": dict(mapping), "rows": len(tx)}
    manifest |= {"label_delay_days": float(label_delay_days), "fraud_rows": len(labels)}
    write_dataset(Path(out), tx, labels, manifest)
    return {**manifest, "transactions": len(tx), "labels": len(labels)}


def cli(
    file: Annotated[Path, typer.Argument(help="CSV (.csv, .csv.gz) or parquet (.parquet, .pq) file.")],
    mapping: Annotated[str, typer.Option("--map", help=f"FIELD=COLUMN,...; needs {', '.join(REQUIRED)}.")],
    out: Annotated[Path | None, typer.Option(help="Dataset folder, replaced. Default: data_dir.")] = None,
    label_delay_days: Annotated[float, typer.Option(help="Days to a fraud label without reported_at.")] = 30,
    default_country: Annotated[str, typer.Option(help="merchant_country for rows without one.")] = "US",
) -> None:
    r"""Import your own transactions (CSV or parquet) as a dataset every later stage reads.

    Nothing is written unless the whole file is valid. Naive timestamps are taken as UTC.

    Example:

        fraudctl import txns.csv --out var/mydata \
            --map transaction_id=id,event_time=ts,card_id=card,merchant_id=shop,amount=amt,is_fraud=fraud
    """
    target, console = out or get_settings().demo_data_dir, Console()
    try:
        with console.status(f"importing {escape(str(file))}"):  # 1M rows take ~15 s
            summary = import_transactions(
                file, parse_mapping(mapping), target, label_delay_days, default_country
            )
    except ImportValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    console.print(
        f"imported [bold]{summary['rows']:,}[/] transactions ([bold]{summary['fraud_rows']:,}[/] fraud, "
        f"{summary['labels']:,} labels) into {escape(str(target))}"
    )
