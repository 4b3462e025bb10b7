"""Traces (OpenTelemetry), metrics (Ray -> Prometheus) and structured logs (issue 4)."""
