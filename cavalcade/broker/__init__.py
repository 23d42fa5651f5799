"""Broker use-cases: declare, bind, publish, consume, ack, recovery. No sockets, no pamqp."""
