"""Celery drop-in suite: a real ``celery worker`` against Cavalcade and RabbitMQ."""
