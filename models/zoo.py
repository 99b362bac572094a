"""Zoo definitions register themselves here (see models/__init__.py)."""
