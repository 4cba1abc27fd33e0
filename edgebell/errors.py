"""The one exception hierarchy of edgebell.

    EdgebellError                 root: catch this to catch anything edgebell raises
    ├── ConfigError               bad configuration or a file it names; carries file, line, key path
    │   └── ConfigErrors          several of them, found in one pass (check-config lists all)
    ├── RadioError                the serial receiver could not be opened or read
    ├── ApnsError                 talking to Apple
    │   ├── ApnsTransportError    TCP, TLS, HTTP/2, timeout, GOAWAY: retry anew
    │   └── ApnsAuthError         a provider token or certificate could not be made
    ├── StoreError                the durable outbox (SQLite) failed
    ├── CloudError                MQTT sync: a refused token list, a bad message
    ├── HomeAssistantError        the home broker's link (Home Assistant): TLS files
    ├── ControlError              the control socket: daemon not running, bad request
    │   ├── NotRunningError       nobody listens on the socket
    │   └── NotAnsweringError     a daemon listens but did not answer in time
    └── RegistryError             the cloud's token registry refused a call (``status``: HTTP)
        ├── BadRequest            400: malformed input
        ├── Unauthorised          401: no or a wrong bearer token
        ├── NotFound              404: unknown user, gateway, phone or share
        └── Conflict              409: valid, but not possible in the registry's present state

An APNs *rejection* (400, 410, 429 ...) is not an exception: it is a
``PushResult`` that the outbox acts on. Third-party exceptions are translated once,
at the boundary where they occur, with ``raise ... from exc``.
"""

from __future__ import annotations

from edgebell.privacy import redact


class EdgebellError(Exception):
    """Root of every error edgebell raises on purpose."""


class ConfigError(EdgebellError):
    """A configuration problem, located as precisely as we can: ``file:line: key.path: message``."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        # A device token written where a key belongs (`- 8b3c…: sandbox`) is part of the key
        # path and of the message: shortened here, it stays short in check-config, the log,
        # status (config.reload_error) and systemd's STATUS= line, which every user can read.
        self.message = redact(message)
        self.file = file
        self.line = line
        self.key = None if key is None else redact(key)
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
            where += ": "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class ConfigErrors(ConfigError):
    """Several configuration problems found in one pass: ``errors`` holds each, located.

    As a string they are joined with "; " (one line for logs, status and STATUS=);
    ``check-config`` prints them one per line.
    """

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = tuple(errors)
        first = self.errors[0]
        super().__init__(first.message, file=first.file, line=first.line, key=first.key)

    def __str__(self) -> str:
        return "; ".join(str(error) for error in self.errors)


def config_errors(errors: list[ConfigError]) -> ConfigError:
    """The one error, or all of them as ConfigErrors."""
    return errors[0] if len(errors) == 1 else ConfigErrors(errors)


class RadioError(EdgebellError):
    """The serial receiver could not be opened, configured or read."""


class ApnsError(EdgebellError):
    """Something went wrong talking to Apple's push service."""


class ApnsTransportError(ApnsError):
    """The connection failed (TCP, TLS, HTTP/2, timeout, GOAWAY): retry on a fresh connection."""


class ApnsAuthError(ApnsError):
    """A provider JWT or client certificate could not be loaded or made."""


class StoreError(EdgebellError):
    """The durable outbox failed (disk full, corrupt database)."""


class CloudError(EdgebellError):
    """The cloud sync refused a message (bad signature, stale version, malformed)."""


class HomeAssistantError(EdgebellError):
    """The link to the home's MQTT broker could not be set up (its TLS files)."""


class ControlError(EdgebellError):
    """The control socket: no daemon is running, or the request was refused."""


class NotRunningError(ControlError):
    """No daemon listens on the control socket (as opposed to one that does not answer)."""


class RegistryError(EdgebellError):
    """The token registry refused a call; ``status`` is the HTTP status its API answers."""

    status = 400


class BadRequest(RegistryError):
    """Malformed input: a token that is not hex, an unknown env, a body that is not JSON."""

    status = 400


class Unauthorised(RegistryError):
    """No bearer token, or one the registry does not know."""

    status = 401


class NotFound(RegistryError):
    """An unknown user, gateway, phone or share (or one the caller may not see)."""

    status = 404


class Conflict(RegistryError):
    """Valid input the registry's present state refuses (sharing with the owner, a full list)."""

    status = 409


class NotAnsweringError(ControlError):
    """The daemon took the connection but did not answer in time (hung, stopped, overloaded)."""
