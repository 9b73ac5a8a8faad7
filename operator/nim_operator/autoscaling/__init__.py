"""The built-in autoscaler: scale a NIMService's Deployment on what its pods report.

* `algorithm`: the decision, a pure function (also driven by the benchmark in bench/).
* `metrics`: read and parse a pod's Prometheus text at /v1/metrics.
* `scaler`: one evaluation of one NIMService (read, scrape, decide, scale, record), run by a
  kopf daemon per NIMService with `spec.autoscaling`.
"""
