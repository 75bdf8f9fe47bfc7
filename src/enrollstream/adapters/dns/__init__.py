"""DNS lookups: MX verification before enrollment."""
