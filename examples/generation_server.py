"""A minimal generation endpoint around a protected diffusers pipeline.

    python examples/generation_server.py --bank embeddings/demo-bank.safetensors --port 8765 \
        --accounts tokens.json                     # {"<bearer token>": "<account>", ...}
    curl -s localhost:8765/generate -H 'Authorization: Bearer <token>' -d '{"prompt": "a lighthouse at dusk"}'

POST /generate with JSON {"prompt", "negative_prompt"?, "steps"?, "seed"?}:
200 {"image_png_base64", "verdicts"} when generated (a blocked output comes back replaced,
its verdict says so); 403 {"blocked": ..., "verdicts"} when the guard refused the prompt, the
output or stopped denoising early. Without --model it serves the tiny random-weight test
pipeline (offline demo); with --model it loads a local checkpoint through the guard's scan.

The account a generation is made for (a rights holder's account is allowed its own
characters) comes from authentication, never from the request body: here a bearer token
looked up in --accounts; a platform puts its own authentication there. A request with an
unknown token gets 401; one that names an "account" in its JSON gets 400.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Mapping

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from guard import Guard  # noqa: E402
from guard.adapters.diffusers import GuardBlocked, load_pipeline, protect  # noqa: E402


def make_server(guard: Guard, pipe, host: str = "127.0.0.1", port: int = 0, size: int = 64,
                accounts: Mapping[str, str] | None = None) -> ThreadingHTTPServer:
    """A server (not yet serving) around ``pipe``, protected by ``guard``; ``accounts`` maps
    bearer tokens to accounts (without it every request is anonymous)."""
    protect(pipe, guard)
    tokens = dict(accounts or {})

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            if self.path != "/generate":
                return self._send(404, {"error": "POST /generate"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                prompt = body["prompt"]
                if not isinstance(prompt, str):
                    raise TypeError("prompt must be a string")
                if "account" in body:
                    raise ValueError("the account comes from authentication, not from the request")
            except (ValueError, KeyError, TypeError) as exc:
                return self._send(400, {"error": f"bad request: {exc}"})
            scheme, _, token = self.headers.get("Authorization", "").partition(" ")
            account = tokens.get(token) if scheme.lower() == "bearer" else None
            if token and account is None:
                return self._send(401, {"error": "unknown bearer token"})
            try:
                out = pipe(prompt, negative_prompt=body.get("negative_prompt"), height=size, width=size,
                           guard_account=account,
                           num_inference_steps=int(body.get("steps", 10)),
                           generator=torch.Generator().manual_seed(int(body.get("seed", 0))))
            except GuardBlocked as blocked:
                return self._send(403, {"blocked": str(blocked), "step": blocked.step,
                                        "verdicts": [v.to_dict() for v in blocked.verdicts]})
            buf = io.BytesIO()
            out.images[0].save(buf, "PNG")
            return self._send(200, {"image_png_base64": base64.b64encode(buf.getvalue()).decode(),
                                    "verdicts": [v.to_dict() for v in out.guard_verdicts]})

        def _send(self, status: int, payload: dict):
            data = json.dumps(payload, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # the audit log is the record, not stderr
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", required=True)
    parser.add_argument("--state", help="state folder (audit log, takedown list)")
    parser.add_argument("--model", help="a local checkpoint file or pipeline folder (default: tiny test pipeline)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--accounts", help="JSON file mapping bearer tokens to accounts")
    args = parser.parse_args()
    accounts = json.loads(Path(args.accounts).read_text()) if args.accounts else None
    guard = Guard.open(args.bank, state=args.state)
    if args.model:
        from diffusers import StableDiffusionPipeline
        pipe = load_pipeline(StableDiffusionPipeline, args.model, guard)
        size = 512
    else:
        import tempfile
        from tests.tiny_pipeline import tiny_pipeline
        pipe, size = tiny_pipeline(Path(tempfile.mkdtemp())), 64
    server = make_server(guard, pipe, port=args.port, size=size, accounts=accounts)
    print(f"serving on http://127.0.0.1:{server.server_address[1]}/generate", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
