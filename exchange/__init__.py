"""Evidence Exchange: signed evidence packages, a verifiable custody ledger, per-country grants."""

__version__ = "0.1.0"
