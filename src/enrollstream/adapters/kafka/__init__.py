"""Kafka adapters: topic names and bootstrap, producers and consumers."""
