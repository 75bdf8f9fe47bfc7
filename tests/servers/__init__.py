"""Real servers on 127.0.0.1 for tests: SMTP (aiosmtpd) and DNS (dnslib)."""
