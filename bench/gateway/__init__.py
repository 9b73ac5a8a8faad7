"""`python -m bench.gateway`: nim-gateway's routing strategies on real nim-serve replicas."""
