"""Runs the order backbone on one machine: real Kafka and PostgreSQL, dev SMTP/SMS sinks,
and the three services as processes. Used by `make run`, `make demo` and the test fixtures."""
