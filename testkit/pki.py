"""Throwaway certificates and keys for tests, the demo and benchmarks: a CA, TLS and APNs keys."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")

# Backdated so a gateway whose clock lags a little still accepts the certificates.
_BACKDATE = datetime.timedelta(days=1)
_LIFETIME = datetime.timedelta(days=825)


@dataclass(frozen=True, slots=True)
class CertFiles:
    """A certificate and its private key on disk.

    ``combined`` holds the certificate followed by the key in one PEM file (mode
    0600), the shape of an APNs certificate ``cert_file`` with the key inside.
    """

    common_name: str
    cert: Path
    key: Path
    combined: Path

    def load_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert.read_bytes())

    def load_key(self, passphrase: bytes | None = None) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key.read_bytes(), passphrase)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{self.key} is not an EC private key")
        return key


@dataclass(frozen=True, slots=True)
class AuthKeyFiles:
    """An APNs token-auth signing key as Apple hands it out (``AuthKey_<kid>.p8``)."""

    key_id: str
    team_id: str
    private_key: Path
    public_key: Path

    def load_public_key(self) -> ec.EllipticCurvePublicKey:
        return load_ec_public_key(self.public_key)

    def load_private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.private_key.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{self.private_key} is not an EC private key")
        return key

    def auth_keys(self) -> dict[str, tuple[str, ec.EllipticCurvePublicKey]]:
        """The ``auth_keys`` mapping that makes an ``ApnsStandIn`` accept JWTs from this key."""
        return {self.key_id: (self.team_id, self.load_public_key())}


@dataclass(frozen=True, slots=True)
class KeyPairFiles:
    """A private key (PEM, PKCS#8, mode 0600) and its public key (PEM, SubjectPublicKeyInfo)."""

    private_key: Path
    public_key: Path


@dataclass(frozen=True, slots=True)
class TestPki:
    """Everything one test session needs, made by :func:`make_test_pki`."""

    __test__ = False  # a data holder, not a pytest test class

    dir: Path
    ca: CertFiles
    server: CertFiles
    client: CertFiles
    auth_key: AuthKeyFiles
    token_list_key: KeyPairFiles


def make_ca(dir: Path, name: str = "edgebell test CA") -> CertFiles:
    """A self-signed CA that may only sign end-entity certificates."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return _write_cert(dir, "ca", name, cert, key, None)


def make_server_cert(
    ca: CertFiles,
    dir: Path,
    hosts: Iterable[str] = DEFAULT_HOSTS,
    *,
    name: str = "server",
) -> CertFiles:
    """A TLS server certificate for ``hosts`` (IP addresses and DNS names both go in the SAN)."""
    hosts = tuple(hosts)
    if not hosts:
        raise ValueError("a server certificate needs at least one host")
    san: list[x509.GeneralName] = []
    for host in hosts:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            san.append(x509.DNSName(host))
    return _issue(
        ca,
        Path(dir),
        name,
        hosts[0],
        ExtendedKeyUsageOID.SERVER_AUTH,
        x509.SubjectAlternativeName(san),
        None,
    )


def make_client_cert(
    ca: CertFiles,
    dir: Path,
    common_name: str,
    *,
    key_passphrase: bytes | None = None,
) -> CertFiles:
    """A TLS client certificate; ``common_name`` is what servers see (the gateway id for MQTT).

    With ``key_passphrase`` the key (in ``key`` and ``combined``) is encrypted.
    """
    return _issue(
        ca,
        Path(dir),
        _file_stem(common_name),
        common_name,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        None,
        key_passphrase,
    )


def make_apns_auth_key(
    dir: Path, key_id: str = "ABC123DEFG", *, team_id: str = "DEF123GHIJ"
) -> AuthKeyFiles:
    """An ES256 key as Apple issues it: ``AuthKey_<kid>.p8`` (PKCS#8 PEM, 0600), plus public PEM."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private = dir / f"AuthKey_{key_id}.p8"
    public = dir / f"AuthKey_{key_id}.pub.pem"
    _write_private(private, _pkcs8(key, None))
    _write_public(public, _spki(key.public_key()))
    return AuthKeyFiles(key_id=key_id, team_id=team_id, private_key=private, public_key=public)


def make_ed25519_keypair(dir: Path, name: str = "token-list") -> KeyPairFiles:
    """An Ed25519 key pair (the cloud signs token lists): ``<name>.key`` and ``<name>.pub``."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    private = dir / f"{name}.key"
    public = dir / f"{name}.pub"
    _write_private(private, _pkcs8(key, None))
    _write_public(public, _spki(key.public_key()))
    return KeyPairFiles(private_key=private, public_key=public)


def make_p12(client_cert: CertFiles, dir: Path, passphrase: str | bytes) -> Path:
    """A PKCS#12 bundle of the certificate and its key, as Keychain exports an APNs certificate."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    secret = passphrase.encode() if isinstance(passphrase, str) else passphrase
    if not secret:
        raise ValueError("a .p12 bundle needs a non-empty passphrase")
    bundle = pkcs12.serialize_key_and_certificates(
        name=client_cert.common_name.encode(),
        key=client_cert.load_key(),
        cert=client_cert.load_cert(),
        cas=None,
        encryption_algorithm=serialization.BestAvailableEncryption(secret),
    )
    path = dir / f"{client_cert.cert.stem}.p12"
    _write_private(path, bundle)
    return path


def make_test_pki(
    dir: Path,
    *,
    gateway_id: str = "gw-test",
    key_id: str = "ABC123DEFG",
    team_id: str = "DEF123GHIJ",
) -> TestPki:
    """The usual set: CA, loopback server cert, client cert ``gateway_id``, APNs key, Ed25519."""
    dir = Path(dir)
    ca = make_ca(dir)
    return TestPki(
        dir=dir,
        ca=ca,
        server=make_server_cert(ca, dir),
        client=make_client_cert(ca, dir, gateway_id),
        auth_key=make_apns_auth_key(dir, key_id, team_id=team_id),
        token_list_key=make_ed25519_keypair(dir),
    )


def load_ec_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TypeError(f"{path} is not an EC public key")
    return key


def _issue(
    ca: CertFiles,
    dir: Path,
    stem: str,
    common_name: str,
    usage: x509.ObjectIdentifier,
    san: x509.SubjectAlternativeName | None,
    key_passphrase: bytes | None,
) -> CertFiles:
    dir.mkdir(parents=True, exist_ok=True)
    ca_cert = ca.load_cert()
    ca_key = ca.load_key()
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _write_cert(dir, stem, common_name, cert, key, key_passphrase)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_cert(
    dir: Path,
    stem: str,
    common_name: str,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    key_passphrase: bytes | None,
) -> CertFiles:
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = _pkcs8(key, key_passphrase)
    files = CertFiles(
        common_name=common_name,
        cert=dir / f"{stem}.crt",
        key=dir / f"{stem}.key",
        combined=dir / f"{stem}.pem",
    )
    _write_public(files.cert, cert_pem)
    _write_private(files.key, key_pem)
    _write_private(files.combined, cert_pem + key_pem)
    return files


def _pkcs8(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, passphrase: bytes | None
) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _spki(key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 from the first byte, and forced so when the file already existed.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(fd, 0o600)
        out.write(data)


def _write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o644)


def _file_stem(common_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", common_name) or "client"
