"""Exceptions raised by the Authentication-Results parser and formatter."""


class AuthResSyntaxError(ValueError):
    """A field value that the RFC 8601 section 2.2 grammar refuses.

    ``position`` is the offset in the value where the grammar failed.
    """

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at offset {position})")
        self.message = message
        self.position = position


class FormatError(ValueError):
    """A header that cannot be written as a field that parses back to the same results."""
