"""Configuration: config.yaml loaded into frozen dataclasses, and the checks of check-config."""

from typing import TYPE_CHECKING

from edgebell.config.defaults import (
    default_config_path,
    default_control_socket,
    default_state_dir,
)
from edgebell.config.load import load_config
from edgebell.config.model import (
    ApnsConfig,
    AuthConfig,
    ButtonConfig,
    CertificateAuthConfig,
    CloudConfig,
    Config,
    DelegatedAuthConfig,
    Environment,
    GatewayConfig,
    HomeAssistantConfig,
    LogLevel,
    NotificationConfig,
    OutboxConfig,
    Protocol,
    RadioConfig,
    StaticToken,
    TokenAuthConfig,
)

if TYPE_CHECKING:
    from edgebell.config.check import check_config

__all__ = [
    "ApnsConfig",
    "AuthConfig",
    "ButtonConfig",
    "CertificateAuthConfig",
    "CloudConfig",
    "Config",
    "DelegatedAuthConfig",
    "Environment",
    "GatewayConfig",
    "HomeAssistantConfig",
    "LogLevel",
    "NotificationConfig",
    "OutboxConfig",
    "Protocol",
    "RadioConfig",
    "StaticToken",
    "TokenAuthConfig",
    "check_config",
    "default_config_path",
    "default_control_socket",
    "default_state_dir",
    "load_config",
]


def __getattr__(name: str) -> object:
    # check_config loads the cryptography package; only `run` and `check-config` need it,
    # and `edgebell status` should start in a blink.
    if name == "check_config":
        from edgebell.config.check import check_config

        return check_config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
