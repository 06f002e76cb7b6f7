"""Object storage and the database: adapters around the core."""
