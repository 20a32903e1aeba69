"""Lead-to-cash on Temporal: configuration, ledger access, pricing rules, server and CLI."""
