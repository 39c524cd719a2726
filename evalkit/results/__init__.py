"""Results: run folders on disk (store), their typed schema, the read side (runs as
frames, summaries)."""
