"""Ed25519 signatures of artifacts: who made this artifact, before any of it is opened.

An artifact's kernels are shared objects that ``tilefx.load`` dlopen-s: loading
one runs its code, like unpickling. The manifest lists the sha256 of every
file (``verify_files`` checks them), so signing the manifest's bytes signs the
whole artifact:

    tilefx keygen mykey                                  # mykey.key (private), mykey.pub
    tilefx compile model.py:Net --input 8x64 -o out --sign mykey.key
    m = tilefx.load("out", key="mykey.pub")              # ArtifactError unless signed by mykey

The signature is ``manifest.sig`` (base64 of the 64-byte Ed25519 signature of
``manifest.json`` as stored). With ``key=`` an unsigned artifact, another
signer's, or a manifest changed after signing is refused with ``ArtifactError``
before the manifest is even parsed. Keys are PEM files (PKCS#8 private,
SubjectPublicKeyInfo public), as ``openssl genpkey -algorithm ed25519`` makes.

``cryptography`` is imported only here, and only when signing or verifying, so
``import tilefx`` and an unsigned ``tilefx.load`` stay light.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
from pathlib import Path
from typing import Any, Union

from tilefx.compiler.artifact import MANIFEST, ArtifactError
from tilefx.compiler.cli import CLIError

SIGNATURE_FILE = "manifest.sig"

# A public key: a PEM file's path, PEM bytes, or a cryptography Ed25519PublicKey.
PublicKeyLike = Union[str, os.PathLike, bytes, Any]


def generate_keypair(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (private, readable by its owner only) and ``PREFIX.pub``."""
    from cryptography.hazmat.primitives import serialization  # heavy: loaded on first use
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # heavy: loaded on first use

    private, public = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for path in (private, public):
        if path.exists():
            raise FileExistsError(f"{path} exists; choose another name (keys are never overwritten)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # created 0600 from the start: the private key is never readable by others, not even briefly
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def sign_artifact(root: str | os.PathLike, private_key_file: str | os.PathLike) -> Path:
    """Sign ``root/manifest.json`` with the Ed25519 private key in ``private_key_file``
    (PEM); writes and returns ``root/manifest.sig``. Sign last: any later change to the
    manifest invalidates the signature."""
    from cryptography.hazmat.primitives import serialization  # heavy: loaded on first use
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # heavy: loaded on first use

    root = Path(root)
    try:
        key = serialization.load_pem_private_key(Path(private_key_file).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ArtifactError(f"cannot read the signing key {private_key_file}: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ArtifactError(f"signing key {private_key_file} is a {type(key).__name__}, not an "
                            "Ed25519 private key (make one with `tilefx keygen NAME`)")
    signature = key.sign((root / MANIFEST).read_bytes())
    out = root / SIGNATURE_FILE
    out.write_text(base64.b64encode(signature).decode() + "\n")
    return out


def _public_key(key: PublicKeyLike) -> Any:
    from cryptography.hazmat.primitives import serialization  # heavy: loaded on first use
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # heavy: loaded on first use

    if isinstance(key, Ed25519PublicKey):
        return key
    where = "the key given" if isinstance(key, bytes) else str(key)
    try:
        pem = key if isinstance(key, bytes) else Path(key).read_bytes()
        loaded = serialization.load_pem_public_key(pem)
    except (OSError, ValueError, TypeError) as e:
        raise ArtifactError(f"cannot read the public key {where}: {e}") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise ArtifactError(f"public key {where} is a {type(loaded).__name__}, not Ed25519")
    return loaded


def verify_manifest(root: Path, manifest_bytes: bytes, key: PublicKeyLike) -> None:
    """Raise ``ArtifactError`` unless ``manifest_bytes`` carry a valid signature by ``key``."""
    from cryptography.exceptions import InvalidSignature  # heavy: loaded on first use

    public = _public_key(key)
    sig_path = root / SIGNATURE_FILE
    if sig_path.is_symlink() or not sig_path.is_file():
        raise ArtifactError(f"{root} is not signed (no {SIGNATURE_FILE}) and a key was given: "
                            "refusing to load it; sign it with `tilefx compile ... --sign KEYFILE`")
    try:
        signature = base64.b64decode(sig_path.read_text().strip(), validate=True)
        public.verify(signature, manifest_bytes)
    except (InvalidSignature, binascii.Error, ValueError, UnicodeDecodeError):
        raise ArtifactError(f"{sig_path} is not a valid signature of {root / MANIFEST} by the "
                            "given key: the artifact was signed by someone else or modified "
                            "after signing; refusing to load it") from None


def add_parser(sub: Any) -> None:
    """Register ``tilefx keygen NAME``."""
    p = sub.add_parser("keygen", help="make an Ed25519 key pair to sign artifacts",
                       description="Write NAME.key (private, mode 600: keep it secret; "
                                   "`tilefx compile ... --sign NAME.key`) and NAME.pub "
                                   "(public: `tilefx.load(dir, key='NAME.pub')`, "
                                   "`tilefx run dir --key NAME.pub`).")
    p.add_argument("name", metavar="NAME", help="path prefix of the two key files")
    p.set_defaults(func=_cmd_keygen)


def _cmd_keygen(args: argparse.Namespace) -> int:
    try:
        private, public = generate_keypair(args.name)
    except (FileExistsError, OSError) as e:
        raise CLIError(str(e)) from None
    print(f"private key: {private} (keep it secret; sign with --sign {private})\n"
          f"public key:  {public} (verify with tilefx.load(dir, key={str(public)!r}))")
    return 0
