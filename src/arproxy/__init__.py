"""arproxy: an SMTP proxy that authenticates mail at the border of a mail domain."""

__version__ = "0.1.0"
