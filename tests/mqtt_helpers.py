"""Test parts for MQTT: a throw-away CA and server certificate, and a raw paho client that records."""
from __future__ import annotations

import datetime
import ipaddress
import os
import threading
from typing import List, Optional, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from harness import wait_for


def make_tls(workdir: str) -> Tuple[str, str, str]:
    """A CA and a server certificate for localhost / 127.0.0.1: (ca_file, cert_file, key_file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    os.makedirs(workdir, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tuple(os.path.join(workdir, name) for name in ("ca.pem", "server.pem", "server.key"))
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths  # type: ignore[return-value]


class RawClient:
    """A plain paho client that keeps every message it receives: (topic, payload, qos)."""

    def __init__(self, port: int, username: Optional[str] = None, password: Optional[str] = None,
                 subscribe: Tuple[str, ...] = (), will: Optional[Tuple[str, bytes]] = None) -> None:
        self.messages: List[Tuple[str, bytes, int]] = []
        self.granted: list = []  # SUBACK reason codes
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack: Optional[str] = None
        self._subscribe = subscribe
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", reconnect_on_failure=False)
        if password is not None:
            self.client.username_pw_set(username or "", password)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, m.qos))
        self.client.on_disconnect = lambda *args: self.disconnected.set()
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.granted.extend(codes)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connack = str(reason_code)
        if not reason_code.is_failure:
            for topic in self._subscribe:
                client.subscribe(topic, qos=1)
            self.connected.set()
        else:
            self.disconnected.set()

    def wait_connected(self) -> "RawClient":
        wait_for(lambda: self.connected.is_set() or self.disconnected.is_set(), 10, message="MQTT CONNACK")
        return self

    def publish(self, topic: str, payload: bytes, qos: int = 1):
        return self.client.publish(topic, payload, qos=qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
