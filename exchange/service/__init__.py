"""Placeholder: filled by the service issue."""
