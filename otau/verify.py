"""Integrity and authenticity: size, streamed sha256, the file manifest and its ed25519 signature.

A package may carry ``gwe-manifest.json`` (every file's sha256, size and mode, every
symlink's target, plus the package name and version) next to its install.sh, and
``gwe-manifest.sig``, a detached ed25519 signature of the manifest's exact bytes.
The unpacker hashes every file as it writes it, so checking the unpacked tree against
the manifest costs no second read. Keys are PEM files (PKCS#8 private, SPKI public);
a gateway trusts the ``*.pub`` / ``*.pem`` public keys in ``gwe_paths().trusted_keys``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

from atomic_config import atomic_write

from .errors import VerifyError
from .package import PackageName

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MANIFEST_FORMAT = 1
# One unpacked entry: ("file", sha256, size, mode) or ("link", target, 0, 0).
Entry = Tuple[str, str, int, int]


def check_size(path: str, max_bytes: int) -> int:
    size = os.path.getsize(path)
    if size > max_bytes:
        raise VerifyError("package is %d bytes, over the %d-byte limit" % (size, max_bytes))
    if size == 0:
        raise VerifyError("package is empty")
    return size


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: str, expected: str) -> str:
    actual = sha256_file(path)
    if actual.lower() != expected.strip().lower():
        raise VerifyError("sha256 mismatch: expected %s, got %s" % (expected.strip().lower(), actual))
    return actual


def build_manifest(package: PackageName, entries: Mapping[str, Entry]) -> bytes:
    """The manifest bytes for ``entries`` (paths relative to the package root)."""
    files = {}
    for path in sorted(entries):
        kind, value, size, mode = entries[path]
        if kind == "file":
            files[path] = {"sha256": value, "size": size, "mode": "%04o" % (mode & 0o777)}
        else:
            files[path] = {"link": value}
    doc = {"format": MANIFEST_FORMAT, "name": package.name, "version": package.version, "files": files}
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _parse_manifest(raw: bytes, package: PackageName) -> Dict[str, Dict]:
    try:
        doc = json.loads(raw.decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        files = doc["files"]
        if doc.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError("unknown format")
        if not all(isinstance(want, dict) for want in files.values()):
            raise ValueError("every file entry must be an object")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise VerifyError("gwe-manifest.json is unreadable: %s" % exc)
    if doc.get("name") != package.name or doc.get("version") != package.version:
        raise VerifyError("manifest is for %s %s, not %s %s"
                          % (doc.get("name"), doc.get("version"), package.name, package.version))
    return files


class ManifestGate:
    """The manifest, checked against each member while the archive streams (see :mod:`otau.unpack`):
    a member's kind, size and mode from its header before its data is read, its sha256 as soon
    as its data has been written, and at the end that nothing listed is missing."""

    def __init__(self, raw: bytes, package: PackageName) -> None:
        self.files = _parse_manifest(raw, package)

    def expect(self, path: str, kind: str, size: int, mode: int, link: str = "") -> None:
        want = self.files.get(path)
        if want is None:
            raise VerifyError("%s is not in the manifest" % path)
        if kind == "link":
            if want.get("link") != link:
                raise VerifyError("symlink %s does not match the manifest" % path)
            return
        if "link" in want or want.get("size") != size:
            raise VerifyError("%s does not match its sha256 in the manifest (size %d)" % (path, size))
        if want.get("mode") not in (None, "%04o" % (mode & 0o777)):
            raise VerifyError("%s has mode %04o, manifest says %s" % (path, mode & 0o777, want.get("mode")))

    def confirm(self, path: str, entry: Entry) -> None:
        kind, value, size, mode = entry
        self.expect(path, kind, size, mode, value if kind == "link" else "")
        if kind == "file" and self.files[path].get("sha256") != value:
            raise VerifyError("%s does not match its sha256 in the manifest" % path)

    def finish(self, entries: Mapping[str, Entry]) -> None:
        for path, entry in sorted(entries.items()):
            self.confirm(path, entry)
        missing = sorted(set(self.files) - set(entries))
        if missing:
            raise VerifyError("%s is in the manifest but not in the package" % missing[0])


# --- ed25519 keys and signatures (cryptography is imported only when a key is used) ---

def _raw_public(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key) -> str:
    """A short, stable name for a public key: the first 16 hex digits of sha256(raw key)."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def generate_keypair(private_path: str) -> Tuple[str, str]:
    """Write a new ed25519 private key (0600) and ``<private_path>.pub``; refuse to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public_path = private_path + ".pub"
    for path in (private_path, public_path):
        if os.path.exists(path):
            raise VerifyError("%s already exists" % path)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(private_path, private_pem, mode=0o600, keep_previous=False)
    atomic_write(public_path, public_pem, mode=0o644, keep_previous=False)
    return private_path, public_path


def load_private_key(path: str):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise VerifyError("cannot read private key %s: %s" % (path, exc))
    if not isinstance(key, Ed25519PrivateKey):
        raise VerifyError("%s is not an ed25519 private key" % path)
    return key


def load_public_key(raw_pem: bytes, source: str):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(raw_pem)
    except (ValueError, TypeError) as exc:
        raise VerifyError("cannot read public key %s: %s" % (source, exc))
    if not isinstance(key, Ed25519PublicKey):
        raise VerifyError("%s is not an ed25519 public key" % source)
    return key


def load_trusted_keys(directory: str) -> Dict[str, object]:
    """key id -> public key for every readable key file in ``directory`` (bad files are logged)."""
    keys: Dict[str, object] = {}
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return keys
    for name in names:
        if not name.endswith((".pub", ".pem")):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                key = load_public_key(f.read(), path)
        except (OSError, VerifyError) as exc:
            log.warning("ignoring trusted key %s: %s", path, exc)
            continue
        keys[key_id(key)] = key
    return keys


def sign_manifest(manifest: bytes, private_key) -> bytes:
    """The detached signature file's bytes for ``manifest``."""
    signature = private_key.sign(manifest)
    doc = {"algorithm": "ed25519", "key_id": key_id(private_key.public_key()),
           "signature": base64.b64encode(signature).decode("ascii")}
    return (json.dumps(doc, sort_keys=True) + "\n").encode("ascii")


@dataclass(frozen=True)
class SignatureResult:
    state: str  # "verified", "unsigned", "unverified"
    key_id: Optional[str] = None

    def describe(self) -> str:
        return self.state + (" (key %s)" % self.key_id if self.key_id else "")


def signature_requirement(policy: str, trusted: Mapping[str, object], self_update: bool) -> Optional[str]:
    """Why this package must carry a valid signature by a trusted key, or None when it need not.

    ``policy`` is ``[otau] require_signatures``: ``auto`` (the default) requires one as soon as
    any trusted key is configured, ``true`` always, ``false`` never, except that Gateway
    Engine's own packages (self-update) need one whenever a key is configured.
    """
    if self_update and trusted:
        return "Gateway Engine's own packages must be signed when a trusted key is configured"
    if policy == "true":
        return "require_signatures = true"
    if policy == "auto" and trusted:
        return "a trusted key is configured"
    return None


def check_signature(manifest: Optional[bytes], signature: Optional[bytes], trusted: Mapping[str, object],
                    required: Optional[str]) -> SignatureResult:
    """Decide whether a package's signature is acceptable.

    A signature by a trusted key must verify. Without a signature, or signed by a key the
    gateway does not know, the package passes only when no signature is ``required`` (the
    reason, from :func:`signature_requirement`).
    """
    if signature is None:
        if required:
            raise VerifyError("package is not signed and signatures are required (%s)" % required)
        return SignatureResult("unsigned")
    if manifest is None:
        raise VerifyError("package has a signature but no gwe-manifest.json")
    try:
        doc = json.loads(signature.decode("ascii"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("algorithm") != "ed25519":
            raise ValueError("algorithm %r" % doc.get("algorithm"))
        kid = str(doc["key_id"])
        raw_sig = base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise VerifyError("gwe-manifest.sig is unreadable: %s" % exc)
    key = trusted.get(kid)
    if key is None:
        if required:
            raise VerifyError("package is signed by key %s, which is not trusted (%s)" % (kid, required))
        log.warning("signature by unknown key %s not checked (signatures not required)", kid)
        return SignatureResult("unverified", kid)
    from cryptography.exceptions import InvalidSignature
    try:
        key.verify(raw_sig, manifest)
    except InvalidSignature:
        raise VerifyError("bad signature by key %s" % kid)
    return SignatureResult("verified", kid)
