"""The cost ledger: SQLite store, migrations, pricing and reports."""

from .store import CallRecord, Ledger, ledger_path_for

__all__ = ["CallRecord", "Ledger", "ledger_path_for"]
