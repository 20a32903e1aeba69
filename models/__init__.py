"""Pydantic models: workflow input, signals, state, documents passed to activities, ledger tables.

Everything here except `models.ledger` is safe to import inside the workflow sandbox.
"""
