"""enrollstream: an event-sourced async worker for drip-campaign enrollments on Kafka and Postgres."""

__version__ = "0.1.0"
