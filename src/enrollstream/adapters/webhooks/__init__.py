"""Outbound webhooks: request signing (and its verification for subscribers) and the subscriptions table."""
