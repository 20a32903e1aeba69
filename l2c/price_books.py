"""Price book versions in the ledger: a deal keeps pricing on the version of its first quote.

Each worker registers the price book it was started with (config/catalog.toml). A version already
in the ledger must hold the same prices: changing the file without a new version is refused at
start, because a deal priced on that version could no longer be priced again as it was.
"""

import threading
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from l2c.config import Catalog, ConfigError
from l2c.documents import sha256_hex
from models.ledger import PriceBookRecord


def register_price_book(engine: Engine, catalog: Catalog) -> None:
    """Store `catalog` under its version, once; refuse a different catalog under a stored version."""
    # Settings left at their defaults are left out: a field this code adds later (with its
    # default) does not change a stored version's fingerprint.
    content = catalog.model_dump_json(exclude_defaults=True)
    digest = sha256_hex(content)
    for _ in range(2):  # a second worker starting at the same moment may store it first
        with Session(engine) as session:
            stored = session.get(PriceBookRecord, catalog.version)
            if stored is not None:
                if stored.sha256 != digest:
                    raise ConfigError(
                        f"config/catalog.toml: price book version {catalog.version!r} is already "
                        "in the ledger with other prices or rules; give the changed price book a "
                        "new version"
                    )
                return
            session.add(PriceBookRecord(version=catalog.version, sha256=digest, content=content,
                                        loaded_at=datetime.now(UTC)))  # fmt: skip
            try:
                session.commit()
                return
            except IntegrityError:
                session.rollback()
    raise ConfigError(f"price book {catalog.version!r} could not be stored in the ledger")


class PriceBooks:
    """The current price book and, from the ledger, the versions deals were first quoted on."""

    def __init__(self, engine: Engine, current: Catalog):
        self._engine = engine
        self.current = current
        self._loaded: dict[str, Catalog] = {current.version: current}
        self._lock = threading.Lock()

    def version(self, version: str | None) -> Catalog | None:
        """The price book of `version` (None: the current one); None if the ledger has no such
        version."""
        if version is None:
            return self.current
        with self._lock:
            if version not in self._loaded:
                with Session(self._engine) as session:
                    stored = session.get(PriceBookRecord, version)
                if stored is None:
                    return None
                self._loaded[version] = Catalog.model_validate_json(stored.content)
            return self._loaded[version]
