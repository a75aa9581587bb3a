"""A local RFC 3161 time-stamping authority on loopback, for the tests (no public TSA is
reachable here): parses the request, answers a token signed with its own RSA key and
self-signed certificate, the way a real TSA's answer is built (TSTInfo in CMS SignedData
with content-type and message-digest signed attributes)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

from asn1crypto import algos, cms, core, tsp, x509
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class TimeStampAuthority:
    def __init__(self, folder: Path, refuse: bool = False):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, "test TSA")])
        now = datetime.now(timezone.utc)
        self.cert = (cx509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
                     .add_extension(cx509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_path = folder / "tsa.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.refuse, self.serial, self.requests = refuse, 0, 0
        authority = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                answer = authority.answer(tsp.TimeStampReq.load(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/tsa"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, request) -> bytes:
        self.requests += 1
        if self.refuse:  # a response with a status and no token (DER by hand: asn1crypto wants the token)
            status = tsp.PKIStatusInfo({"status": "rejection", "status_string": ["policy says no"]}).dump()
            return b"\x30" + bytes([len(status)]) + status
        self.serial += 1
        info = tsp.TSTInfo({
            "version": 1, "policy": "1.3.6.1.4.1.99999.1", "message_imprint": request["message_imprint"],
            "serial_number": self.serial, "gen_time": datetime.now(timezone.utc).replace(microsecond=0),
            "nonce": request["nonce"]})
        content = info.dump()
        certificate = x509.Certificate.load(self.cert.public_bytes(serialization.Encoding.DER))
        attributes = cms.CMSAttributes([
            cms.CMSAttribute({"type": "content_type", "values": ["tst_info"]}),
            cms.CMSAttribute({"type": "message_digest", "values": [hashlib.sha256(content).digest()]}),
        ])
        signature = self.key.sign(attributes.dump(), padding.PKCS1v15(), hashes.SHA256())
        signer = cms.SignerInfo({
            "version": "v1",
            "sid": cms.SignerIdentifier({"issuer_and_serial_number": cms.IssuerAndSerialNumber({
                "issuer": certificate.issuer, "serial_number": certificate.serial_number})}),
            "digest_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
            "signed_attrs": attributes,
            "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "sha256_rsa"}),
            "signature": signature})
        signed = cms.SignedData({
            "version": "v3", "digest_algorithms": [algos.DigestAlgorithm({"algorithm": "sha256"})],
            "encap_content_info": {"content_type": "tst_info", "content": core.ParsableOctetString(content)},
            "certificates": [certificate], "signer_infos": [signer]})
        token = cms.ContentInfo({"content_type": "signed_data", "content": signed})
        return tsp.TimeStampResp({"status": {"status": "granted"}, "time_stamp_token": token}).dump()

    def stop(self) -> None:
        self.server.shutdown()
