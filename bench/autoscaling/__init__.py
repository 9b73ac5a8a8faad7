"""Trace-replay benchmark of the built-in autoscaler against the HPA algorithm and KubeAI's rule.

`python -m bench.autoscaling` (see docs/autoscaling.md#benchmark):

* `trace`: a bursty request trace from a seed;
* `simulation`: a discrete-event model of replicas behind one queue, with startup delays;
* `scalers`: the operator's own `decide()`, and reimplementations of the two baselines.
"""
