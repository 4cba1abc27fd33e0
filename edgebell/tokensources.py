"""Which phones the token book holds: the config's ``tokens`` merged with the cloud's list."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgebell.apns.model import Environment
from edgebell.config import Config
from edgebell.tokens import AuthorisedToken, TokenBook

if TYPE_CHECKING:  # the MQTT stack is imported only by gateways that have a cloud section
    from edgebell.cloud.tokenlist import TokenList


class TokenSources:
    """Puts into the book what the config and the cloud's list say (start, reload, new list)."""

    def __init__(self, book: TokenBook, config: Config) -> None:
        self._book = book
        self._config = config
        self._cloud_list: TokenList | None = None

    def use_config(self, config: Config) -> None:
        self._config = config
        self._apply()

    def use_cloud_list(self, token_list: TokenList) -> None:
        self._cloud_list = token_list
        self._apply()

    def envs_in_use(self) -> set[Environment]:
        """The environments the active phones need (the default one when there are none)."""
        active = {Environment(t.env) for t in self._book.active()}
        return active or {Environment(self._config.apns.environment)}

    def _apply(self) -> None:
        default_env = self._config.apns.environment
        static = [AuthorisedToken(t.token, t.env or default_env) for t in self._config.tokens]
        cloud_list = self._cloud_list
        if cloud_list is None:
            self._book.replace(static, None)
        else:
            # A token in both comes from the cloud's list: its buttons, its registered_at.
            listed = {t.token for t in cloud_list.tokens}
            merged = [t for t in static if t.token not in listed] + list(cloud_list.tokens)
            self._book.replace(merged, cloud_list.ver)
