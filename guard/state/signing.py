"""Signed heads: the chain's newest row, signed with an Ed25519 key the operator keeps.

A signed head, exported (to counsel, a rights holder, a notary, another system), proves
with the public key alone that the log held this row at that time; `guard audit verify
--anchor HEAD --public-key KEY` then proves no row up to it was changed or cut off since.
Run ``guard audit sign`` on a schedule (hourly, say) to bound what an insider could rewrite.
Needs the ``cryptography`` package (the ``evidence`` extra).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from guard.errors import ConfigError
from guard.state.audit import AuditLog

FORMAT = "diffusion-guard signed head 1"


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    except ImportError:
        raise ConfigError("signed heads need the cryptography package: pip install 'diffusion-guard[evidence]'") \
            from None
    return serialization, Ed25519PrivateKey, Ed25519PublicKey, InvalidSignature


def generate_keypair(folder: str | os.PathLike) -> tuple[Path, Path]:
    """``audit-signing.key`` (private, PEM, mode 0600) and ``audit-signing.pub`` in ``folder``."""
    serialization, private_cls, _, _ = _crypto()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / "audit-signing.key", folder / "audit-signing.pub"
    if private.exists():
        raise ConfigError(f"{private} exists: a signing key is never overwritten")
    key = private_cls.generate()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _message(head: dict[str, Any]) -> bytes:
    fields = {k: head[k] for k in ("format", "seq", "row_hash", "rows", "signed_at")}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def sign_head(audit: AuditLog, private_key: str | os.PathLike) -> dict[str, Any]:
    """The log's head, signed."""
    serialization, private_cls, _, _ = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(private_key).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--signing-key {private_key}: not a readable Ed25519 private key ({exc})") from None
    if not isinstance(key, private_cls):
        raise ConfigError(f"--signing-key {private_key}: not an Ed25519 key")
    head = audit.head()
    rows = audit._db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    signed = {"format": FORMAT, "seq": head.seq, "row_hash": head.row_hash, "rows": rows,
              "signed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {**signed, "public_key": public.hex(), "signature": key.sign(_message(signed)).hex()}


def check_signed_head(head: dict[str, Any], public_key: str | os.PathLike) -> None:
    """Raise ``ValueError`` unless ``head`` was signed with ``public_key``'s private key. The
    key embedded in the head is not trusted: anyone can sign with a key of their own."""
    serialization, _, public_cls, invalid = _crypto()
    try:
        key = serialization.load_pem_public_key(Path(public_key).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--public-key {public_key}: not a readable Ed25519 public key ({exc})") from None
    if not isinstance(key, public_cls):
        raise ConfigError(f"--public-key {public_key}: not an Ed25519 key")
    if head.get("format") != FORMAT:
        raise ValueError("not a signed head of this format")
    try:
        key.verify(bytes.fromhex(str(head["signature"])), _message(head))
    except (invalid, ValueError, KeyError) as exc:
        raise ValueError(f"its signature does not verify with {public_key} ({type(exc).__name__})") from None
