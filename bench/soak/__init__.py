"""Load and soak run of the real server (`python -m bench.soak`)."""
