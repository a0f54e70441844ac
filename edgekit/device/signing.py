"""Signed bundles: Ed25519 keys, the `manifest.sig` file, and the trust check `serve --trust` runs.

What is signed: the exact bytes of `manifest.json`, which already records every file's size and sha256,
so a valid signature plus the existing file checks authenticate the whole bundle. The signature lives
beside it in `manifest.sig` (JSON):

    {"format": "edgekit-manifest-signature", "version": 1, "algorithm": "ed25519",
     "signed_file": "manifest.json", "public_key": <base64 raw 32 bytes>,
     "key_sha256": <hex sha256 of the raw public key>, "signature": <base64 64 bytes>}

The public key inside is for display only (`inspect` without --trust): a trust decision uses the
trusted key with the same sha256 and never the key the bundle brings. The signature is plain Ed25519
over the manifest's bytes, so `openssl pkeyutl -verify -rawin` can check it too.

Keys: private keys PEM (PKCS#8, unencrypted) or OpenSSH; public keys PEM (SubjectPublicKeyInfo) or an
OpenSSH `ssh-ed25519 ...` line. `cryptography` is a device dependency where it publishes wheels; elsewhere
a signature check says that it is missing. No sizes or times here. May import: stdlib, cryptography,
edgekit.core.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.core.bundle import MANIFEST, SIGNATURE
from edgekit.core.errors import BundleError, ConfigError

FORMAT = "edgekit-manifest-signature"
ALGORITHM = "ed25519"
KEY_SUFFIXES = (".pub", ".pem")  # files read from a --trust folder
_HEX64 = re.compile(r"[0-9a-f]{64}")  # key_sha256; anything else (e.g. a newline) never reaches a message


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ConfigError("bundle signatures need the 'cryptography' package (pip install cryptography)") from None
    return serialization, ed25519


def _raw_public(public_key) -> bytes:
    serialization, _ = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(raw_public: bytes) -> str:
    """Hex sha256 of a raw 32-byte public key (the `key_sha256` of manifest.sig)."""
    return hashlib.sha256(raw_public).hexdigest()


def short_id(key_sha256: str) -> str:
    """The fingerprint people read: `ed25519:` and the first 16 hex digits of the key's sha256."""
    return f"{ALGORITHM}:{key_sha256[:16]}"


# ---- keys -------------------------------------------------------------------------------------------

def generate_key(private_path: Path) -> tuple[Path, str]:
    """Write a new Ed25519 private key to `private_path` (PEM, mode 0600, never over an existing file) and
    its public key to `<private_path>.pub` (PEM); returns the public path and the key's sha256."""
    serialization, ed25519 = _crypto()
    public_path = private_path.with_name(private_path.name + ".pub")
    for p in (private_path, public_path):
        if p.exists():
            raise ConfigError(f"{p} already exists; refusing to overwrite a key")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        os.chmod(private_path, 0o600)  # whatever the umask
        public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    except OSError as exc:
        raise ConfigError(f"cannot write the key {private_path}: {exc.strerror or exc}") from None
    return public_path, key_id(_raw_public(key.public_key()))


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def load_private_key(path: Path):
    """The Ed25519 private key in `path` (PEM or OpenSSH, unencrypted); ConfigError naming the problem."""
    serialization, ed25519 = _crypto()
    data = _read(path, "signing key")
    if b"PUBLIC KEY" in data or data.startswith(b"ssh-"):
        raise ConfigError(f"{path} is a public key; signing needs the private key (`edgekit keygen` writes both)")
    loader = serialization.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data else \
        serialization.load_pem_private_key
    try:
        key = loader(data, password=None)
    except TypeError:
        raise ConfigError(f"{path} is encrypted; edgekit reads unencrypted Ed25519 keys (keep it mode 0600)") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a readable private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key (bundle signatures are Ed25519)")
    return key


@dataclass(frozen=True)
class TrustedKey:
    path: Path
    key_sha256: str
    public_key: object = field(repr=False, compare=False)


def load_public_key(path: Path) -> TrustedKey:
    """The Ed25519 public key in `path` (PEM or an `ssh-ed25519` line); a private key is refused."""
    serialization, ed25519 = _crypto()
    data = _read(path, "trusted key")
    if b"PRIVATE KEY" in data:
        raise ConfigError(f"{path} is a private key; --trust takes public keys (the .pub file)")
    loader = serialization.load_ssh_public_key if data.startswith(b"ssh-") else serialization.load_pem_public_key
    try:
        key = loader(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a readable public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key (bundle signatures are Ed25519)")
    return TrustedKey(Path(path), key_id(_raw_public(key)), key)


def load_trusted(paths) -> list[TrustedKey]:
    """Public keys from files and folders (a folder gives every *.pub and *.pem file in it)."""
    keys = []
    for p in (Path(x).expanduser() for x in paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in KEY_SUFFIXES)
            if not found:
                raise ConfigError(f"trusted key folder {p} holds no *.pub or *.pem files")
            keys += [load_public_key(f) for f in found]
        else:
            keys.append(load_public_key(p))
    return keys


# ---- signature files ----------------------------------------------------------------------------------

def signature_file(private_key, manifest_bytes: bytes) -> bytes:
    """The bytes of manifest.sig for `manifest_bytes`, signed with `private_key`."""
    raw = _raw_public(private_key.public_key())
    doc = {"format": FORMAT, "version": 1, "algorithm": ALGORITHM, "signed_file": MANIFEST,
           "public_key": base64.b64encode(raw).decode(), "key_sha256": key_id(raw),
           "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode()}
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


@dataclass(frozen=True)
class Signature:
    key_sha256: str
    public_key: bytes
    signature: bytes


def read_signature(root: Path) -> Signature | None:
    """The parsed manifest.sig in bundle folder `root`, None when there is none; BundleError when malformed."""
    path = root / SIGNATURE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT or doc.get("signed_file") != MANIFEST:
            raise ValueError("not an edgekit manifest signature")
        if doc.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm {doc.get('algorithm')!r}, edgekit checks {ALGORITHM}")
        sig = Signature(str(doc["key_sha256"]), base64.b64decode(doc["public_key"], validate=True),
                        base64.b64decode(doc["signature"], validate=True))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, binascii.Error) as exc:
        raise BundleError(f"{root}: {SIGNATURE} is not a valid signature file ({exc})") from None
    if len(sig.public_key) != 32 or len(sig.signature) != 64 or not _HEX64.fullmatch(sig.key_sha256):
        raise BundleError(f"{root}: {SIGNATURE} is not a valid signature file (wrong key, key_sha256 or signature "
                          "length)")
    return sig


def _valid(public_key, sig: Signature, manifest_bytes: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(sig.signature, manifest_bytes)
    except InvalidSignature:
        return False
    return True


# ---- checking -------------------------------------------------------------------------------------------

class TrustCheck:
    """`load_bundle(path, check=TrustCheck(keys))`: refuses, with one line naming the reason, a bundle that is
    unsigned, signed by a key not among `keys`, or whose signature does not match its manifest's bytes.
    After a pass, `signer` is the trusted key that signed it."""

    def __init__(self, keys: list[TrustedKey]):
        if not keys:
            raise ConfigError("--trust named no keys")
        self.keys = {k.key_sha256: k for k in keys}
        self.signer: TrustedKey | None = None

    def __call__(self, root: Path, manifest_bytes: bytes) -> None:
        sig = read_signature(root)
        trusted = ", ".join(short_id(k) for k in self.keys)
        if sig is None:
            raise BundleError(f"{root}: bundle is unsigned (no {SIGNATURE}); refused: --trust requires a signature "
                              f"by a trusted key ({trusted})")
        key = self.keys.get(sig.key_sha256)
        if key is None:
            raise BundleError(f"{root}: bundle is signed by {short_id(sig.key_sha256)}, which is not a trusted key "
                              f"({trusted}); refused")
        if not _valid(key.public_key, sig, manifest_bytes):
            raise BundleError(f"{root}: bad signature: {MANIFEST} does not match the signature by "
                              f"{short_id(sig.key_sha256)} (modified after signing, or forged); refused")
        self.signer = key


def describe(root: Path, trusted: TrustedKey | None = None) -> str:
    """One line for `inspect`: who signed the bundle folder `root` and what was checked."""
    if trusted is not None:
        return f"signed by {short_id(trusted.key_sha256)}, verified with trusted key {trusted.path}"
    sig = read_signature(root)
    if sig is None:
        return "unsigned"
    who = f"signed by {short_id(sig.key_sha256)}"
    try:
        _, ed25519 = _crypto()
    except ConfigError as exc:
        return f"{who} (not checked: {exc})"
    public = ed25519.Ed25519PublicKey.from_public_bytes(sig.public_key)
    if key_id(sig.public_key) != sig.key_sha256 or not _valid(public, sig, (root / MANIFEST).read_bytes()):
        return f"{who}: signature INVALID (the manifest was modified after signing, or the signature is forged)"
    return f"{who} (signature matches the key it names; unverified: pass --trust KEY to check the signer)"


def sign_folder(root: Path, private_key) -> str:
    """Write manifest.sig for the verified bundle folder `root` (atomically); returns the key's sha256."""
    from edgekit.core.bundle import write_atomic

    data = signature_file(private_key, (root / MANIFEST).read_bytes())
    write_atomic(root / SIGNATURE, data)
    os.chmod(root / SIGNATURE, 0o644 & ~_umask())
    return key_id(_raw_public(private_key.public_key()))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sign_bundle(path: Path, private_key) -> str:
    """Sign an existing bundle, folder or .tar, after checking every file against its manifest. A .tar is
    extracted beside itself, signed and written back under a temporary name renamed into place."""
    import shutil
    import tempfile

    from edgekit.core.bundle import load_bundle, write_tar

    path = Path(path)
    if path.is_dir():
        return sign_folder(_signable(load_bundle(path)), private_key)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.sign-", dir=path.parent))
    try:
        root = _signable(load_bundle(path, extract_to=work))
        key = sign_folder(root, private_key)
        write_tar(root, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return key


def _signable(b) -> Path:
    if any(f.get("path") == SIGNATURE for f in b.manifest["files"]):
        raise BundleError(f"{b.root}: manifest lists {SIGNATURE} among its files; cannot sign it")
    return b.root
