"""TLS for the HTTP and WebSocket transports: a self-signed certificate for a node,
and the client contexts that trust it (or the system's authorities).

A node serves HTTPS/WSS with a certificate and key file (:class:`TlsFiles`).
For a node without a certificate from a public authority,
:func:`self_signed_cert` makes one; clients then trust exactly that file
(``client_context(cafile)``). ``verify=False`` exists for tests and
emergencies only: it trusts anyone.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from loomdb.errors import ValidationError

CERT_FILE = "tls-cert.pem"
KEY_FILE = "tls-key.pem"
DEFAULT_HOSTNAMES = ("127.0.0.1", "localhost")

Verify = bool | str | os.PathLike[str] | ssl.SSLContext
"""How a client checks a node's certificate: ``True`` the system's authorities,
a path a CA file (PEM) to trust instead, a context as given, ``False`` nothing."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A node's certificate (PEM, chain first to last) and private key (PEM)."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """A server context with these files; raises ValidationError if they do not load."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise ValidationError(
                f"cannot load the TLS certificate {self.cert} and key {self.key}: {exc}"
            ) from None
        return context


def self_signed_cert(
    directory: str | os.PathLike[str],
    hostnames: tuple[str, ...] = DEFAULT_HOSTNAMES,
    *,
    days: int = 825,
) -> TlsFiles:
    """Write a new self-signed certificate for ``hostnames`` (IP addresses or DNS
    names) and its ECDSA P-256 key into ``directory``; the key file is 0600.

    Existing files of the same names are replaced."""
    if not hostnames:
        raise ValidationError("a certificate needs at least one hostname")
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.now(UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # some slack for clock skew
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder / CERT_FILE, folder / KEY_FILE)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    files.key.unlink(missing_ok=True)  # a new file gets 0600 from the start
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def client_context(cafile: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A client context that checks certificates and hostnames against ``cafile``
    (PEM: a CA, or a node's self-signed certificate) or, without one, the system's
    authorities."""
    try:
        return ssl.create_default_context(cafile=os.fspath(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise ValidationError(f"cannot load the CA file {cafile}: {exc}") from None


def verify_context(verify: Verify) -> ssl.SSLContext:
    """The client context a ``verify`` argument stands for."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is True:
        return client_context()
    if verify is False:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return client_context(verify)
