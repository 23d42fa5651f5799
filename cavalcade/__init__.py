"""Cavalcade: an AMQP 0-9-1 broker whose whole state lives in PostgreSQL."""

__version__ = "0.1.0"
