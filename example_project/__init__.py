"""A small orders-and-payments service that uses celery_reliable."""
