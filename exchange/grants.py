"""Access grants: per-country, per-case scopes (filled by the service issue)."""
