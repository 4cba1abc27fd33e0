"""check-config: open every file the config names and check it holds the right key or cert."""

from __future__ import annotations

import datetime
import os
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgebell.apns.signer import Signer
from edgebell.config.model import CertificateAuthConfig, Config, TokenAuthConfig
from edgebell.errors import ApnsAuthError, ConfigError, config_errors
from edgebell.secrets import read_file, read_passphrase, read_secret

if TYPE_CHECKING:
    # cryptography costs a process about 10 MB of RSS for as long as it runs: the daemon
    # imports it only for what needs it (a client certificate, the cloud's list key).
    # Its own ``.p8`` key is checked by the JWT signer's child (edgebell.apns.jwt_child).
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

# A certificate this close to its end is worth a warning: APNs certificates last a year.
EXPIRY_WARNING = datetime.timedelta(days=30)


def check_config(
    config: Config,
    *,
    now: datetime.datetime | None = None,
    receiver: bool = False,
    sign: bool = True,
) -> list[str]:
    """Warnings about ``config``; ConfigError, at the line of the key naming it, for a bad file.

    Checks the APNs key or certificate, CA files, the cloud client certificate and key,
    the token list verification key and the Home Assistant files, and with ``receiver``
    (check-config, not ``run``: a receiver may be plugged in after the start) that the
    serial port exists. Every bad file is reported, as ConfigErrors when there are several.
    With ``sign``, the APNs ``.p8`` key signs a JWT in the signer's child (about 60 ms in
    which the caller waits: a reload asks for it only when ``apns.auth`` changed).
    """
    checker = _Checker(config, now or datetime.datetime.now(datetime.UTC), sign=sign)
    errors: list[ConfigError] = []

    def step(check: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        try:
            check(*args, **kwargs)
        except ConfigError as exc:
            errors.extend(getattr(exc, "errors", (exc,)))

    if receiver:
        step(checker.receiver_port, config.radio.port)
    auth = config.apns.auth
    if isinstance(auth, TokenAuthConfig):
        step(checker.apns_key, auth)
    elif isinstance(auth, CertificateAuthConfig):
        step(checker.apns_certificate, auth)
    if config.apns.ca_file is not None:
        step(checker.ca_file, "apns.ca_file", config.apns.ca_file)
    if config.cloud is not None:
        step(checker.ca_file, "cloud.ca_file", config.cloud.ca_file)
        step(checker.client_identity, config.cloud.cert_file, config.cloud.key_file)
        step(checker.token_list_key, config.cloud.token_list_key)
    home = config.home_assistant
    if home is not None:
        if home.ca_file is not None:
            step(checker.ca_file, "home_assistant.ca_file", home.ca_file)
        if home.cert_file is not None and home.key_file is not None:
            step(checker.client_identity, home.cert_file, home.key_file, section="home_assistant")
        if home.password_file is not None:
            step(checker.password, "home_assistant.password_file", home.password_file)
    if errors:
        raise config_errors(errors)
    return checker.warnings + _warnings(config)


def _warnings(config: Config) -> list[str]:
    warnings = []
    if not config.buttons:
        warnings.append(
            _at(
                config,
                "buttons",
                "no buttons: nothing will ring "
                "(`edgebell learn` shows the match: of each button pressed)",
            )
        )
    if config.cloud is None and not config.tokens:
        warnings.append(
            _at(config, "tokens", "neither cloud nor tokens is set: a ring notifies nobody")
        )
    if config.radio.protocol != "rflink" and "radio.ping_interval" in config.lines:
        warnings.append(
            _at(
                config,
                "radio.ping_interval",
                f"ignored: {config.radio.protocol} receivers do not answer pings",
            )
        )
    if config.apns.host is not None:
        warnings.append(_at(config, "apns.host", f"pushes go to {config.apns.host}, not to Apple"))
    if config.cloud is not None and not config.cloud.tls:
        warnings.append(
            _at(
                config,
                "cloud.url",
                "mqtt:// is not encrypted and sends no client certificate; use mqtts://",
            )
        )
    return warnings


def _at(config: Config, key: str, message: str) -> str:
    return str(config.error_at(key, message))


class _Checker:
    """Checks one file after another, turning each problem into a located ConfigError."""

    def __init__(self, config: Config, now: datetime.datetime, *, sign: bool) -> None:
        self.config = config
        self.now = now
        self.sign = sign
        self.warnings: list[str] = []

    def fail(self, key: str, message: str) -> ConfigError:
        return self.config.error_at(key, message)

    def read(self, key: str, path: Path, what: str, *, secret: bool) -> bytes:
        try:
            return read_secret(path, what=what) if secret else read_file(path, what=what)
        except ConfigError as exc:
            raise self.unreadable(key, path, what, exc, secret=secret) from exc

    def unreadable(
        self, key: str, path: Path, what: str, exc: ConfigError, *, secret: bool = True
    ) -> ConfigError:
        places = self.config.searched.get(path)
        if places and not os.path.exists(path):
            # The last fallback alone would hide that the service's credentials and
            # systemd's stores were looked in too: name every place, in order.
            hint = " (keys belong in /etc/credstore, mode 0600: docs/operations.md)"
            return self.fail(
                key,
                f"{what} {path.name} not found in: {', '.join(places)}{hint if secret else ''}",
            )
        return self.fail(key, exc.message)

    def receiver_port(self, port: str) -> None:
        if "://" in port:  # socket://, rfc2217:// ...: only opening it can tell
            self.warnings.append(
                _at(self.config, "radio.port", f"{port} is a pyserial URL: not checked here")
            )
            return
        if not os.path.exists(port):
            raise self.fail(
                "radio.port",
                f"{port} does not exist: is the receiver plugged in? "
                "(ls /dev/serial/by-id/ names it)",
            )

    def apns_key(self, auth: TokenAuthConfig) -> None:
        key_name = "apns.auth.key_file"
        path = auth.key_file
        data = self.read(key_name, path, "APNs auth key", secret=True)
        if not self.sign:
            return
        # Signed by the child the daemon uses for every JWT: what passes here will sign there.
        signer = Signer(data, auth.key_id, auth.team_id, name=str(path))
        try:
            signer.check(int(self.now.timestamp()))
        except ApnsAuthError as exc:
            raise self.fail(key_name, str(exc)) from None

    def apns_certificate(self, auth: CertificateAuthConfig) -> None:
        key_name = "apns.auth.cert_file"
        path = auth.cert_file
        passphrase = None
        if auth.passphrase_file is not None:
            try:
                passphrase = read_passphrase(auth.passphrase_file)
            except ConfigError as exc:
                raise self.unreadable(
                    "apns.auth.passphrase_file", auth.passphrase_file, "passphrase file", exc
                ) from exc
        # The certificate file holds the private key too, so it is a secret.
        data = self.read(key_name, path, "APNs certificate", secret=True)
        if b"-----BEGIN" in data:
            certificate = self.pem_certificates(key_name, path, data)[0]
            key = self.pem_private_key(key_name, path, data, passphrase)
        else:
            certificate, key = self.p12_identity(key_name, path, data, passphrase)
        self.same_key(key_name, path, certificate, key)
        self.validity(key_name, path, certificate)

    def p12_identity(
        self, key_name: str, path: Path, data: bytes, passphrase: bytes | None
    ) -> tuple[x509.Certificate, PrivateKeyTypes]:
        from cryptography.hazmat.primitives.serialization import pkcs12

        try:
            key, certificate, _ = pkcs12.load_key_and_certificates(data, passphrase)
        except ValueError:
            if passphrase is None:
                problem = "a .p12 without passphrase (set passphrase_file if it has one)"
            else:
                problem = "a .p12 that the passphrase in passphrase_file opens"
            raise self.fail(
                key_name, f"{path} is neither PEM (certificate and key) nor {problem}"
            ) from None
        if key is None or certificate is None:
            raise self.fail(key_name, f"{path} must hold both the certificate and its key")
        return certificate, key

    def ca_file(self, key_name: str, path: Path) -> None:
        data = self.read(key_name, path, "CA file", secret=False)
        # Loaded the way the TLS connections will load it (ssl, not cryptography's X.509).
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
                cadata=data.decode("ascii")
            )
        except (ssl.SSLError, UnicodeDecodeError, ValueError):
            raise self.fail(key_name, f"{path} holds no PEM certificate") from None

    def client_identity(self, cert_path: Path, key_path: Path, *, section: str = "cloud") -> None:
        cert_key, key_key = f"{section}.cert_file", f"{section}.key_file"
        cert_data = self.read(cert_key, cert_path, "gateway certificate", secret=False)
        certificate = self.pem_certificates(cert_key, cert_path, cert_data)[0]
        key_data = self.read(key_key, key_path, "gateway key", secret=True)
        key = self.pem_private_key(key_key, key_path, key_data, None)
        self.same_key(key_key, key_path, certificate, key)
        self.validity(cert_key, cert_path, certificate)

    def password(self, key_name: str, path: Path) -> None:
        try:
            password = read_passphrase(path)
        except ConfigError as exc:
            raise self.fail(key_name, exc.message) from exc
        if not password:
            raise self.fail(key_name, f"{path} is empty: it holds the broker password")

    def token_list_key(self, path: Path) -> None:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key_name = "cloud.token_list_key"
        data = self.read(key_name, path, "token list key", secret=False)
        if b"PRIVATE KEY" in data:
            raise self.fail(
                key_name,
                f"{path} holds a private key: give the Ed25519 public key here; "
                "the private key stays with the cloud",
            )
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            key = None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise self.fail(
                key_name, f"{path} is not an Ed25519 public key (PEM, BEGIN PUBLIC KEY)"
            )

    def pem_certificates(
        self, key_name: str, path: Path, data: bytes
    ) -> Sequence[x509.Certificate]:
        from cryptography import x509

        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError:
            raise self.fail(key_name, f"{path} holds no PEM certificate") from None

    def pem_private_key(
        self, key_name: str, path: Path, data: bytes, passphrase: bytes | None
    ) -> PrivateKeyTypes:
        """The private key in PEM ``data``; ``passphrase`` is None where none can be configured."""
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization

        try:
            return serialization.load_pem_private_key(data, password=None)
        except TypeError:
            if passphrase is None:
                fix = "set passphrase_file" if key_name.startswith("apns.") else "decrypt it"
                raise self.fail(
                    key_name, f"{path}: the private key is encrypted ({fix}; chmod 600 guards it)"
                ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise self.fail(key_name, f"{path} holds no readable PEM private key") from None
        try:
            return serialization.load_pem_private_key(data, password=passphrase)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise self.fail(key_name, f"{path}: wrong passphrase for the private key") from None

    def same_key(
        self, key_name: str, path: Path, certificate: x509.Certificate, key: PrivateKeyTypes
    ) -> None:
        from cryptography.hazmat.primitives import serialization

        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if certificate.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            raise self.fail(key_name, f"{path}: the private key does not match the certificate")

    def validity(self, key_name: str, path: Path, certificate: x509.Certificate) -> None:
        ends = certificate.not_valid_after_utc
        if ends <= self.now:
            raise self.fail(key_name, f"{path}: the certificate expired on {ends:%Y-%m-%d}")
        begins = certificate.not_valid_before_utc
        # Only a warning: a gateway without a battery clock may not have synced time yet.
        if begins > self.now:
            self.warn(
                key_name,
                f"{path}: the certificate is not valid before {begins:%Y-%m-%d}; "
                "is the clock right?",
            )
        elif ends - self.now < EXPIRY_WARNING:
            self.warn(key_name, f"{path}: the certificate expires on {ends:%Y-%m-%d}")

    def warn(self, key_name: str, message: str) -> None:
        self.warnings.append(str(self.fail(key_name, message)))
