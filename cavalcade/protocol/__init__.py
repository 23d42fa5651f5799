"""AMQP 0-9-1 over asyncio: framing, handshake, channels, deliveries, confirms, flow control."""
