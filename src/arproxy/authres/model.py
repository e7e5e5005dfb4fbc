"""The Authentication-Results header as typed, immutable values (RFC 8601 section 2.2)."""

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Property:
    """A propspec: ``ptype.name=value``, e.g. ``smtp.mailfrom=example.net``."""

    ptype: str
    name: str
    value: str
    comment: str | None = None


@dataclass(frozen=True)
class ResInfo:
    """One result: ``method[/method_version]=result (comment) reason=... propspecs``."""

    method: str
    result: str
    reason: str | None = None
    properties: tuple[Property, ...] = ()
    comment: str | None = None
    method_version: str | None = None

    def without_comments(self) -> "ResInfo":
        """The same result with its comment and its properties' comments dropped."""
        properties = tuple(replace(prop, comment=None) for prop in self.properties)
        return replace(self, comment=None, properties=properties)


@dataclass(frozen=True)
class AuthenticationResults:
    """A whole field value. No results means ``; none``; version None means version 1."""

    authserv_id: str
    results: tuple[ResInfo, ...] = ()
    version: str | None = None

    def without_comments(self) -> "AuthenticationResults":
        """The same header with every comment dropped, as the parser returns it."""
        return replace(self, results=tuple(res.without_comments() for res in self.results))
