"""Real-data tracks built from registry packages (the emoji search track)."""
