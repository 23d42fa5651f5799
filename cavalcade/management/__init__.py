"""The RabbitMQ-compatible management HTTP API, ``/metrics`` and the dashboard.

Beside ``protocol/``, never importing it: every handler calls broker use-cases."""
