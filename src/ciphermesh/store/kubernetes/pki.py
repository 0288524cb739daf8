"""The certificates a private kube-apiserver needs, as envtest makes them: one CA, a serving cert for the
loopback address, a service-account signing key, and client certs (CN = user, O = groups)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files under one directory (0700, every file 0600)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.root / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.root / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"

    def client_cert(self, user: str) -> Path:
        return self.root / f"{user}.crt"

    def client_key(self, user: str) -> Path:
        return self.root / f"{user}.key"


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str, groups: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _sign(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def make_pki(root: Path, users: dict[str, tuple[str, ...]]) -> Pki:
    """Write a fresh CA, a serving cert for 127.0.0.1, a service-account key and one client cert per
    user (`users`: name -> groups) under `root`."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    root.chmod(0o700)
    pki = Pki(root)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("ciphermesh-ca")
    ca_usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    _write(pki.ca_key, _key_pem(ca_key))
    _write(
        pki.ca_cert,
        _sign(
            ca_name,
            ca_key,
            ca_name,
            ca_key,
            [(x509.BasicConstraints(ca=True, path_length=None), True), (ca_usage, True)],
        ),
    )
    leaf_usage = x509.KeyUsage(True, False, True, False, False, False, False, False, False)
    serving_key = ec.generate_private_key(ec.SECP256R1())
    sans = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    _write(pki.serving_key, _key_pem(serving_key))
    _write(
        pki.serving_cert,
        _sign(
            _name("kube-apiserver"),
            serving_key,
            ca_name,
            ca_key,
            [
                (sans, False),
                (leaf_usage, True),
                (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            ],
        ),
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())
    _write(pki.sa_key, _key_pem(sa_key))
    _write(
        pki.sa_pub,
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    for user, groups in users.items():
        key = ec.generate_private_key(ec.SECP256R1())
        _write(pki.client_key(user), _key_pem(key))
        _write(
            pki.client_cert(user),
            _sign(
                _name(user, groups),
                key,
                ca_name,
                ca_key,
                [(leaf_usage, True), (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
            ),
        )
    return pki
