"""Email delivery: message building, one-click unsubscribe tokens and SMTP sending."""
