"""The ledger's database engine: SQLite by default (WAL, serialized writers), PostgreSQL supported."""

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, UniqueConstraint, create_engine, event, inspect, text
from sqlmodel import Session, SQLModel

import models.ledger as ledger_tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from models.ledger import NumberSeries

INVOICE_SERIES = "INV"
CREDIT_NOTE_SERIES = "CN"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the driver, open transactions, so that every one of them can
            # start as BEGIN IMMEDIATE below.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Any) -> None:
            # Take the write lock at the start: two writers never both read then both write, so
            # number allocation stays gap-free and duplicate checks stay true.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


class LedgerSchemaOutdated(Exception):
    """The ledger was created by an older version and lacks columns this version writes."""


def init_ledger(engine: Engine) -> None:
    """Create missing tables and number series; safe to call on every start.

    A table created by an older version is not altered behind anyone's back: the start is refused
    with the table and the columns it lacks.
    """
    SQLModel.metadata.create_all(engine)
    verify_ledger(engine)
    with Session(engine) as session:
        for series in (INVOICE_SERIES, CREDIT_NOTE_SERIES):
            if session.get(NumberSeries, series) is None:
                session.add(NumberSeries(name=series, next_value=1))
        session.commit()


def verify_ledger(engine: Engine) -> None:
    """Refuse a ledger this version cannot use: no ledger there at all, or one an older version
    created (a table, column or natural key missing). Creates nothing: reports can run on a
    read-only connection, and a mistyped URL is an error, not an empty ledger."""
    inspector = inspect(engine)
    where = engine.url.render_as_string(hide_password=True)
    tables = SQLModel.metadata.sorted_tables
    absent = [table.name for table in tables if not inspector.has_table(table.name)]
    if len(absent) == len(tables):
        raise LedgerSchemaOutdated(f"there is no ledger at {where} (check L2C_DATABASE_URL; "
                                   "a worker creates it when it first starts)")  # fmt: skip
    for table in tables:
        if table.name in absent:
            missing = ["the whole table"]
        else:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            missing = [column.name for column in table.columns if column.name not in present]
            # A natural key changed since (e.g. invoices gained a kind): the old one would
            # refuse rows.
            unique = {tuple(sorted(u["column_names"]))
                      for u in inspector.get_unique_constraints(table.name)}  # fmt: skip
            missing += [
                f"unique ({', '.join(constraint.columns.keys())})"
                for constraint in table.constraints
                if isinstance(constraint, UniqueConstraint)
                and tuple(sorted(constraint.columns.keys())) not in unique
            ]
        if missing:
            raise LedgerSchemaOutdated(
                f"the ledger at {where} was created by an older version: table {table.name} "
                f"lacks {', '.join(missing)}. Point L2C_DATABASE_URL at a new database, or move "
                "the old file aside"
            )


def next_document_number(session: Session, series: str) -> str:
    """The next number of a series as printed on its documents (INV-000001), taken inside the
    caller's transaction; `l2c audit ledger` checks the series has no gaps."""
    return f"{series}-{take_next_number(session, series):06d}"


def take_next_number(session: Session, series: str) -> int:
    """Take the next number of a series inside the caller's transaction (rolled back with it)."""
    row = session.execute(
        text(
            "UPDATE number_series SET next_value = next_value + 1 WHERE name = :name "
            "RETURNING next_value - 1"
        ),
        {"name": series},
    ).scalar_one()
    return int(row)
