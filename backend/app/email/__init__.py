"""Email for missed messages: verified addresses, digests over SMTP, unsubscribe links."""
