"""Our server against `vllm serve` on the same engine settings (`python -m bench.server`)."""
