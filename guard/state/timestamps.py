"""RFC 3161 time-stamps of the chain's head, from a time-stamping authority (TSA) the operator
uses: a third party's signed statement that the head (and so every row up to it) existed at
that time, which the operator's own signature cannot give.

``guard audit timestamp --tsa URL`` asks the TSA for a token over the head; ``guard audit
verify --anchor HEAD --tsa-cert CERT`` checks the token with the TSA's certificate and the
chain against the head. Requests and tokens are parsed with ``asn1crypto``; signatures are
checked with ``cryptography`` (both in the ``evidence`` extra).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from guard.errors import ConfigError, GuardError

FORMAT = "diffusion-guard timestamped head 1"


def _libraries():
    try:
        from asn1crypto import algos, cms, tsp, x509  # noqa: F401
        from cryptography import x509 as cx509  # noqa: F401
    except ImportError:
        raise ConfigError("time-stamps need asn1crypto and cryptography: pip install 'diffusion-guard[evidence]'") \
            from None
    return tsp, cms


def imprint(head: dict[str, Any]) -> bytes:
    """What the TSA signs: the SHA-256 of the head's row number and row hash."""
    fields = {"seq": int(head["seq"]), "row_hash": str(head["row_hash"])}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).digest()


def request_timestamp(head: dict[str, Any], tsa_url: str, timeout: float = 30) -> dict[str, Any]:
    """The head with a TSA's token over it.

    Raises:
        ConfigError: the TSA cannot be reached (a wrong URL, no network).
        GuardError: the TSA answered something other than a token for this head.
    """
    tsp, _ = _libraries()
    nonce = secrets.randbits(63)
    digest = imprint(head)
    request = tsp.TimeStampReq({
        "version": 1, "message_imprint": {"hash_algorithm": {"algorithm": "sha256"}, "hashed_message": digest},
        "nonce": nonce, "cert_req": True})
    http = urllib.request.Request(tsa_url, data=request.dump(), headers={"Content-Type": "application/timestamp-query"})
    try:
        with urllib.request.urlopen(http, timeout=timeout) as answer:
            body = answer.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConfigError(f"--tsa {tsa_url}: cannot reach the time-stamping authority ({exc})") from None
    try:
        # The status first, on its own: a refusal carries no token, which asn1crypto's
        # TimeStampResp cannot load.
        from asn1crypto import parser

        outer = parser.parse(body)[4]
        first = parser.parse(outer)
        info_der = first[3] + first[4]
        status_info = tsp.PKIStatusInfo.load(info_der)
        status = status_info["status"].native
        if status not in ("granted", "granted_with_mods"):
            text = " ".join(status_info["status_string"].native or [])
            raise GuardError(f"the time-stamping authority refused the request: {status} {text}".strip())
        token = tsp.TimeStampResp.load(body)["time_stamp_token"]
        info = _tst_info(token)
    except GuardError:
        raise
    except Exception as exc:  # noqa: BLE001 (anything not a well-formed answer)
        raise GuardError(f"the time-stamping authority's answer is not an RFC 3161 token ({exc})") from None
    if info["message_imprint"]["hashed_message"].native != digest or info["nonce"].native != nonce:
        raise GuardError("the time-stamping authority's token is not for this head (imprint or nonce differ)")
    return {"format": FORMAT, "seq": int(head["seq"]), "row_hash": str(head["row_hash"]),
            "timestamp": {"tsa": tsa_url, "gen_time": info["gen_time"].native.isoformat(),
                          "token": base64.b64encode(token.dump()).decode()}}


def check_timestamp(saved: dict[str, Any], tsa_cert: str | Path) -> datetime:
    """The time the TSA vouches for, after checking its token: it is over this head, it is
    signed by the key of ``tsa_cert`` (the TSA's certificate, the operator's trust anchor),
    and its signed attributes commit to the token's content.

    Raises:
        ValueError: the token is not genuine for this head and this TSA (the caller reports
            it as tampering).
    """
    tsp, cms = _libraries()
    from cryptography import x509 as cx509

    try:
        certificate = cx509.load_pem_x509_certificate(Path(tsa_cert).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--tsa-cert {tsa_cert}: not a PEM certificate ({exc})") from None
    try:
        token = cms.ContentInfo.load(base64.b64decode(saved["timestamp"]["token"]))
        info = _tst_info(token)
        signed = token["content"]
        [signer] = signed["signer_infos"]
        content = signed["encap_content_info"]["content"].parsed.dump()
        attributes = {a["type"].native: a["values"][0] for a in signer["signed_attrs"]}
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"the time-stamp token cannot be read ({exc})") from None
    if info["message_imprint"]["hashed_message"].native != imprint(saved):
        raise ValueError("the time-stamp token is for another head (its imprint differs)")
    if attributes.get("content_type") is None or attributes["content_type"].native != "tst_info":
        raise ValueError("the token's signed attributes do not name its content")
    algorithm = signer["digest_algorithm"]["algorithm"].native
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise ValueError(f"the token uses digest {algorithm}, which is not accepted")
    if attributes.get("message_digest") is None or \
            attributes["message_digest"].native != hashlib.new(algorithm, content).digest():
        raise ValueError("the token's signed digest does not match its content")
    # The signature is over the signed attributes as a DER SET (RFC 5652 5.4), not their [0] tag.
    message = b"\x31" + signer["signed_attrs"].dump()[1:]
    _verify(certificate.public_key(), signer["signature"].native, message, algorithm)
    return info["gen_time"].native


def _tst_info(token):
    if token["content_type"].native != "signed_data":
        raise ValueError("not a signed-data token")
    encap = token["content"]["encap_content_info"]
    if encap["content_type"].native != "tst_info":
        raise ValueError("the signed content is not a TSTInfo")
    return encap["content"].parsed


def _verify(public_key, signature: bytes, message: bytes, algorithm: str) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    digest = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}[algorithm]()
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, message, padding.PKCS1v15(), digest)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, message, ec.ECDSA(digest))
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        else:
            raise ValueError(f"the TSA certificate's key type ({type(public_key).__name__}) is not supported")
    except InvalidSignature:
        raise ValueError("the token's signature does not verify with the TSA's certificate") from None
