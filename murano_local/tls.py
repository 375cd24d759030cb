"""A local certificate authority in the data directory, and the server certificate it signs.

So that Exosite's own clients, which speak only HTTPS and MQTT over TLS and verify the server,
work against murano_local unchanged: they are given ``DATA/tls/ca.pem`` (murano-client's
``murano_cacert=``, ``curl --cacert``, ``requests``'s ``verify=``). Created on first use; the
server certificate (``localhost``, ``*.m2.localhost``, ``127.0.0.1``, ``::1`` and the address
served on) is issued again when it nears its end, lacks a name, or was signed by another CA.
Keys are 0600 in a 0700 directory, every file written through ``atomic_write``.
"""
from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from typing import Iterable, List, Optional, Tuple

from atomic_config import atomic_write

from .store import private_directory

log = logging.getLogger(__name__)

CA_DAYS = 3650
SERVER_DAYS = 397
RENEW_BEFORE = datetime.timedelta(days=30)
LOOPBACK_NAMES = ("localhost", "*.m2.localhost", "127.0.0.1", "::1")


class TlsError(Exception):
    """The local CA or the server certificate cannot be made or read."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _not_after(cert) -> datetime.datetime:
    after = getattr(cert, "not_valid_after_utc", None)  # cryptography >= 42; older ones give naive UTC
    return after if after is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def _general_name(name: str):
    from cryptography import x509
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


class LocalCA:
    """The CA and server certificate files under ``DATA/tls``."""

    def __init__(self, data_dir: str) -> None:
        self.directory = os.path.join(data_dir, "tls")
        self.ca_cert = os.path.join(self.directory, "ca.pem")
        self.ca_key = os.path.join(self.directory, "ca.key")
        self.server_cert = os.path.join(self.directory, "server.pem")
        self.server_key = os.path.join(self.directory, "server.key")

    def ensure(self, names: Iterable[str] = ()) -> "LocalCA":
        """Make the CA if there is none, and a server certificate for the loopback names plus ``names``."""
        wanted = list(dict.fromkeys(list(LOOPBACK_NAMES) + [n for n in names if n and n not in ("0.0.0.0", "::")]))
        try:
            private_directory(self.directory)
            ca = self._load_ca()
            if ca is None:
                ca = self._make_ca()
            if self._server_needs_issuing(ca[0], wanted):
                self._issue_server(ca, wanted)
        except OSError as exc:
            raise TlsError("cannot write %s: %s" % (self.directory, exc.strerror or exc)) from exc
        return self

    def server_context(self, certfile: Optional[str] = None, keyfile: Optional[str] = None) -> ssl.SSLContext:
        """A TLS server context with the local certificate (or ``certfile``/``keyfile``)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(certfile or self.server_cert, keyfile or self.server_key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError("cannot load the server certificate: %s" % exc) from exc
        return context

    # -- files --------------------------------------------------------------------------
    def _load_ca(self):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        if not (os.path.exists(self.ca_cert) and os.path.exists(self.ca_key)):
            return None
        try:
            with open(self.ca_cert, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
            with open(self.ca_key, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), password=None)
        except (ValueError, TypeError) as exc:
            log.warning("the local CA in %s is unreadable (%s): making a new one; clients must trust the new %s",
                        self.directory, exc, self.ca_cert)
            return None
        if _not_after(cert) - RENEW_BEFORE < _now():
            log.warning("the local CA in %s expires on %s: making a new one; clients must trust the new %s",
                        self.directory, _not_after(cert).date(), self.ca_cert)
            return None
        _tighten(self.ca_key)
        return cert, key

    def _make_ca(self):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "murano-local"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "murano-local CA %s" % os.urandom(4).hex())])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=True, crl_sign=True, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        self._write_pair(self.ca_key, key, self.ca_cert, cert)
        log.info("made a local CA: %s (give it to clients as their CA certificate)", self.ca_cert)
        return cert, key

    def _server_needs_issuing(self, ca_cert, wanted: List[str]) -> bool:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        try:
            with open(self.server_cert, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
            with open(self.server_key, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), password=None)
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            issued_by = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        except (OSError, ValueError, TypeError, x509.ExtensionNotFound):  # missing or damaged: issue again
            return True
        if issued_by != x509.SubjectKeyIdentifier.from_public_key(ca_cert.public_key()).digest:
            return True  # signed by an earlier CA
        if key.public_key().public_numbers() != cert.public_key().public_numbers():
            return True
        if _not_after(cert) - RENEW_BEFORE < _now():
            return True
        _tighten(self.server_key)
        return any(_general_name(n) not in names for n in wanted)

    def _issue_server(self, ca: Tuple, wanted: List[str]) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        ca_cert, ca_key = ca
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(min(now + datetime.timedelta(days=SERVER_DAYS), _not_after(ca_cert)))
                .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in wanted]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        self._write_pair(self.server_key, key, self.server_cert, cert)
        log.info("issued a server certificate for %s", ", ".join(wanted))

    @staticmethod
    def _write_pair(key_path: str, key, cert_path: str, cert) -> None:
        """The key first (0600), then the certificate: a cut in between leaves a pair to make again."""
        from cryptography.hazmat.primitives import serialization
        atomic_write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), mode=0o600, keep_previous=False)
        _tighten(key_path)
        atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, keep_previous=False)


def _tighten(path: str) -> None:
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o600)
