"""Prometheus metrics: counts read from the database at scrape time, request latency
measured in-process (see :mod:`newsletter.metrics.exposition`)."""
