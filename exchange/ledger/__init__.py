"""The custody ledger: RFC 6962 Merkle log and signed checkpoints (pure)."""
