"""HTTP layer: dependencies and route modules."""
