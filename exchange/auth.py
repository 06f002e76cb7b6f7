"""Access tokens (filled by the service issue)."""
