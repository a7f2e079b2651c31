"""Pipeline stages; each is a module with ``run(ctx) -> dict`` and the file it writes."""
