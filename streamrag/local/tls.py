"""Certificates of the secured local stack (``streamrag stack up --secure``), made with
``cryptography``: a CA of the stack and one server certificate for 127.0.0.1 / localhost
that the broker and PostgreSQL present. Everything lives in ``<work_dir>/tls`` (never
committed); the keys are readable by their owner only. Made once, kept across restarts.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from streamrag.local.service import write_private

VALID_DAYS = 825


@dataclass(frozen=True)
class StackCertificates:
    folder: Path

    @property
    def ca(self) -> Path:
        """The CA that clients trust (public)."""
        return self.folder / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    @property
    def server_pem(self) -> Path:
        """Key and certificate in one file: the form of Kafka's PEM keystore."""
        return self.folder / "server.pem"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate for 127.0.0.1 and localhost, signed by the CA."""
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def write_ca(folder: Path, common_name: str) -> Path:
    """A CA certificate alone (its key is thrown away): e.g. one that signed nothing the
    stack presents, for showing that an untrusted certificate is refused."""
    _, cert = make_ca(common_name)
    path = folder / "ca.crt"
    write_private(path, _pem_cert(cert))
    return path


def ensure_certificates(folder: Path) -> StackCertificates:
    """The stack's CA and server certificate, made on first use."""
    certs = StackCertificates(folder)
    if all(p.exists() for p in (certs.ca, certs.server_cert, certs.server_key, certs.server_pem)):
        return certs
    ca_key, ca_cert = make_ca("streamrag local stack CA")
    key, cert = make_server_cert(ca_key, ca_cert)
    write_private(certs.ca, _pem_cert(ca_cert))
    write_private(certs.server_cert, _pem_cert(cert) + _pem_cert(ca_cert))
    write_private(certs.server_key, _pem_key(key))
    write_private(certs.server_pem, _pem_key(key) + _pem_cert(cert) + _pem_cert(ca_cert))
    certs.ca.chmod(0o644)
    certs.server_cert.chmod(0o644)
    return certs
