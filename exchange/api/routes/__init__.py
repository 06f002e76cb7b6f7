"""HTTP routes, one module per resource; each handler parses, calls one use case, answers."""
