"""Tests for the cost ledger: migrations, pricing, budget, reports and plan."""
