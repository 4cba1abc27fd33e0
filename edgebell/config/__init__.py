"""Configuration: config.yaml loaded into frozen dataclasses, and the checks of check-config."""

from edgebell.config.check import check_config
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
    LogLevel,
    NotificationConfig,
    Protocol,
    RadioConfig,
    StaticToken,
    TokenAuthConfig,
)

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
    "LogLevel",
    "NotificationConfig",
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
