"""HTTP routes, one module per resource: score, admin, health."""
