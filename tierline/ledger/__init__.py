"""The cost ledger: SQLite store, migrations, pricing and reports."""

from .store import CallRecord, Ledger, default_ledger_path

__all__ = ["CallRecord", "Ledger", "default_ledger_path"]
