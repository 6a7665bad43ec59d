"""Load tests and the single-view reference benchmark (see loadtest/README.md)."""
