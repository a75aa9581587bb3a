"""The HTTP service: a real uvicorn server on loopback, called over real HTTP."""

from __future__ import annotations

import base64
import os
import shutil
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import uvicorn

from guard import Bank, Guard, Policy
from guard.adapters.service import create_app

from . import model_files as mf
from .conftest import DEMO_REFS, DEMO_UPLOADS


class Service:
    """The app served by uvicorn on 127.0.0.1 (a free port) in a thread, and a tiny client."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def call(self, route: str, body: bytes | dict | None = None, headers: dict | None = None,
             **query) -> tuple[int, dict, dict]:
        """(status, JSON answer, headers)."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        url = self.url + route + ("?" + urllib.parse.urlencode(query) if query else "")
        request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                         headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read()), dict(answer.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read()), dict(exc.headers)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture()
def served(bank_file, encoder, tmp_path):
    """(service, guard, allowed folder): a guard with a state folder, paths readable below one folder."""
    allowed = tmp_path / "uploads"
    allowed.mkdir()
    guard = Guard(Bank.load(bank_file), Policy.load(), encoder, state=tmp_path / "state")
    service = Service(create_app(guard, allow_paths=[allowed], max_model_bytes=1 << 20))
    yield service, guard, allowed
    service.stop()


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_health_names_the_versions_every_verdict_carries(served):
    service, guard, _ = served
    status, body, _ = service.call("/healthz")
    assert status == 200 and body["versions"] == guard.versions
    assert body["versions"]["bank"] == guard.bank.digest


def test_prompts(served):
    service, _, _ = served
    status, verdict, headers = service.call("/v1/prompt", {"text": "奥特曼大战怪兽", "account": "alice"})
    assert status == 200 and verdict["action"] == "block" and headers["x-guard-action"] == "block"
    assert verdict["findings"][0]["subject"] == "ultraman"
    status, verdict, _ = service.call("/v1/prompt", {"text": "a lighthouse at dusk"})
    assert (status, verdict["action"], verdict["findings"]) == (200, "allow", [])


def test_images_in_one_request_each_get_a_verdict(served):
    service, _, _ = served
    images = [{"data": b64(DEMO_REFS / "ultraman" / "pose1.png"), "name": "cover.png"},
              {"data": b64(DEMO_UPLOADS / "truncated_upload.jpg")}]
    status, body, headers = service.call("/v1/images", {"images": images, "surface": "cover_image"})
    assert status == 200 and body["action"] == "block" == headers["x-guard-action"]
    cover, truncated = body["verdicts"]
    assert (cover["subject"], cover["surface"], cover["action"]) == ("cover.png", "cover_image", "block")
    assert cover["findings"][0]["subject"] == "ultraman" and cover["findings"][0]["signal"] == "clip_image"
    assert truncated["subject"] == "image[1]" and truncated["findings"][0]["signal"] == "format"


def test_one_image_as_the_body(served):
    service, _, _ = served
    status, verdict, _ = service.call("/v1/image", (DEMO_UPLOADS / "exact_ultraman_reference.png").read_bytes(),
                                      surface="generated_image", name="gen-1")
    assert status == 200 and verdict["subject"] == "gen-1" and verdict["action"] == "block"


@pytest.mark.parametrize("route, body, status, says", [
    ("/v1/prompt", b"not json", 400, "not JSON"),
    ("/v1/prompt", {"negative": "x"}, 400, "'text' is required"),
    ("/v1/prompt", {"text": 3}, 400, "'text' must be a str"),
    ("/v1/images", {"images": [{"data": "%%%"}]}, 400, "not base64"),
    ("/v1/images", {"images": []}, 400, "1 to 256"),
    ("/v1/images", {"images": [{"data": ""}], "surface": "prompt"}, 400, "does not apply"),
])
def test_bad_requests_are_named(served, route, body, status, says):
    service, _, _ = served
    got, answer, _ = service.call(route, body)
    assert got == status and says in answer["detail"]


def test_model_upload_is_checked_from_a_temporary_file(served, tmp_path):
    service, _, _ = served
    lora = mf.write(tmp_path / "hero.safetensors", mf.kohya_tensors(mf.lora_weights(1)), mf.kohya_metadata())
    status, verdict, _ = service.call("/v1/model", lora.read_bytes(), name="hero.safetensors", account="bob")
    assert status == 200 and verdict["subject"] == "hero.safetensors" and verdict["action"] == "block"
    assert {f["signal"] for f in verdict["findings"]} >= {"metadata"}
    assert verdict["facts"]["format"] == "kohya-lora" and len(verdict["facts"]["sha256"]) == 64
    pickle = (Path(__file__).parent.parent / "examples" / "demo_models" / "totally_safe_model.ckpt").read_bytes()
    status, verdict, _ = service.call("/v1/model", pickle, name="totally_safe_model.ckpt")
    assert status == 200 and verdict["action"] == "block"
    assert any(f["signal"] == "pickle" for f in verdict["findings"])


def test_model_upload_over_the_limit_is_refused_and_nothing_is_left(served):
    service, _, _ = served
    before = set(Path(tempfile.gettempdir()).glob("guard-upload-*"))
    status, answer, _ = service.call("/v1/model", b"\0" * ((1 << 20) + 1))
    assert status == 413 and "over 1048576 bytes" in answer["detail"]
    assert set(Path(tempfile.gettempdir()).glob("guard-upload-*")) == before


def test_path_routes_read_only_below_the_allowed_folders(served, bank_file, encoder, tmp_path):
    service, _, allowed = served
    lora = mf.write(allowed / "hero.safetensors", mf.kohya_tensors(mf.lora_weights(1)), mf.kohya_metadata())
    status, verdict, _ = service.call("/v1/model/path", {"path": str(lora), "account": "bob"})
    assert status == 200 and verdict["action"] == "block"
    outside = mf.write(tmp_path / "outside.safetensors", mf.kohya_tensors(mf.lora_weights(2)))
    (allowed / "link.safetensors").symlink_to(outside)
    for path in (outside, allowed / ".." / "outside.safetensors", allowed / "link.safetensors"):
        status, answer, _ = service.call("/v1/model/path", {"path": str(path)})
        assert status == 403 and "outside the folders" in answer["detail"], path
    closed = Service(create_app(Guard(Bank.load(bank_file), Policy.load(), encoder)))
    try:
        status, answer, _ = closed.call("/v1/model/path", {"path": str(lora)})
        assert status == 403 and "--allow-path" in answer["detail"]
    finally:
        closed.stop()


_OPENED: list[str] = []


def _record_opens(event: str, args: tuple) -> None:
    if event == "open" and args and isinstance(args[0], (str, bytes, Path)):
        _OPENED.append(str(args[0]))


sys.addaudithook(_record_opens)  # audit hooks cannot be removed; it only appends paths


def test_bundles_cannot_reach_outside_the_allowed_folders(served, tmp_path):
    """A publication or dataset below an allowed folder that names, or links to, a file outside
    it: 403 naming that path, and the outside file is never opened."""
    service, guard, allowed = served
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = mf.write(outside / "secret.safetensors", mf.kohya_tensors(mf.lora_weights(4)))
    secret_image = outside / "secret.png"
    secret_image.write_bytes((DEMO_UPLOADS / "unrelated_1.png").read_bytes())
    cases = {}
    for name, manifest in {"relative": {"model": "../../outside/secret.safetensors"},
                           "absolute": {"model": str(secret)},
                           "cover": {"title": "ok", "cover": str(secret_image)}}.items():
        folder = allowed / f"pub-{name}"
        folder.mkdir()
        (folder / "publication.json").write_text(json.dumps(manifest))
        cases[name] = ("/v1/publication/path", folder)
    linked = allowed / "pub-link"
    linked.mkdir()
    (linked / "model.safetensors").symlink_to(secret)
    cases["symlink in a publication"] = ("/v1/publication/path", linked)
    dataset = allowed / "dataset"
    dataset.mkdir()
    (dataset / "a.png").write_bytes((DEMO_UPLOADS / "unrelated_1.png").read_bytes())
    (dataset / "b.png").symlink_to(secret_image)
    cases["symlink in a dataset"] = ("/v1/dataset/path", dataset)
    cases["takedown of a linking publication"] = ("/v1/takedown/path", linked)
    rows = len(list(guard.audit.rows()))
    for name, (route, folder) in cases.items():
        _OPENED.clear()
        status, answer, _ = service.call(route, {"path": str(folder), "notice": "N-1"})
        assert status == 403, (name, answer)
        assert "outside the folders" in answer["detail"] and "secret" in answer["detail"], name
        assert not [p for p in _OPENED if "secret" in p], (name, _OPENED)
    assert len(list(guard.audit.rows())) == rows  # refused requests check nothing
    assert guard.takedowns.entries() == []


def test_path_routes_answer_4xx_for_the_callers_mistakes(served):
    service, guard, allowed = served
    rows = len(list(guard.audit.rows()))
    for route in ("/v1/model/path", "/v1/dataset/path", "/v1/publication/path", "/v1/takedown/path"):
        status, answer, _ = service.call(route, {"path": str(allowed / "nope"), "notice": "N-1"})
        assert status == 404 and "nope" in answer["detail"] and "does not exist" in answer["detail"], (route, answer)
    assert len(list(guard.audit.rows())) == rows  # a typo is not recorded as blocked content
    lora = mf.write(allowed / "hero.safetensors", mf.kohya_tensors(mf.lora_weights(1)))
    status, answer, _ = service.call("/v1/model/path", {"path": str(lora), "metadata_only": "false"})
    assert status == 400 and "metadata_only" in answer["detail"]
    status, verdict, _ = service.call("/v1/model/path", {"path": str(lora), "metadata_only": False})
    assert status == 200 and verdict["facts"].get("sha256")  # hashed: not header-only


def test_a_takedown_through_the_service_keeps_a_stripped_reupload_down(served, tmp_path):
    service, _, allowed = served
    w = mf.lora_weights(5)
    original = mf.write(allowed / "style.safetensors", mf.kohya_tensors(w), {"ss_output_name": "quiet style"})
    status, verdict, _ = service.call("/v1/model/path", {"path": str(original)})
    assert (status, verdict["action"]) == (200, "allow")
    status, body, _ = service.call("/v1/takedown/path", {"path": str(original), "notice": "N-7", "character": "ultraman"})
    assert status == 200 and body["entries"][0]["notice"] == "N-7" and body["entries"][0]["fingerprint_layers"] > 0
    reupload = mf.write(tmp_path / "reup.safetensors", mf.peft_tensors(w, dtype=torch.bfloat16))  # renamed, cast
    status, verdict, _ = service.call("/v1/model", reupload.read_bytes(), name="totally-new.safetensors")
    assert verdict["action"] == "block" and any(f["signal"] == "fingerprint" for f in verdict["findings"])
    status, answer, _ = service.call("/v1/takedown/path", {"path": str(original), "notice": "N-8", "character": "nobody"})
    assert status == 400 and "nobody" in answer["detail"]


def test_a_token_guards_every_v1_route_but_not_health(bank_file, encoder):
    token = "s3cret-token-0123456789"
    service = Service(create_app(Guard(Bank.load(bank_file), Policy.load(), encoder), token=token))
    try:
        assert service.call("/healthz")[0] == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            status, answer, got = service.call("/v1/prompt", {"text": "ultraman"}, headers=headers)
            assert status == 401 and "Bearer" in answer["detail"] and got["www-authenticate"] == "Bearer"
        status, verdict, _ = service.call("/v1/prompt", {"text": "ultraman"}, headers={"Authorization": f"Bearer {token}"})
        assert (status, verdict["action"]) == (200, "block")
    finally:
        service.stop()


def test_file_checks_share_their_slots_while_prompts_go_on(bank_file, encoder, tmp_path):
    guard = Guard(Bank.load(bank_file), Policy.load(), encoder)
    running, peak, lock = [0], [0], threading.Lock()
    real = guard.check_model_file

    def counted(*args, **kwargs):  # the real check, counting how many run at once
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.3)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    guard.check_model_file = counted
    lora = mf.write(tmp_path / "m.safetensors", mf.kohya_tensors(mf.lora_weights(1))).read_bytes()
    service = Service(create_app(guard, file_slots=1))
    try:
        with ThreadPoolExecutor(4) as pool:
            uploads = [pool.submit(service.call, "/v1/model", lora) for _ in range(3)]
            time.sleep(0.2)
            start = time.monotonic()
            assert service.call("/v1/prompt", {"text": "a harbour"})[1]["action"] == "allow"
            prompt_s = time.monotonic() - start
            assert [u.result()[1]["action"] for u in uploads] == ["allow"] * 3
    finally:
        service.stop()
    assert peak[0] == 1 and prompt_s < 0.3  # the uploads queued for their slot, the prompt did not


def test_concurrent_requests_are_all_answered_and_recorded_once(served):
    service, guard, _ = served
    texts = [f"ultraman poster number {i}" if i % 2 else f"a quiet harbour, study {i}" for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda t: service.call("/v1/prompt", {"text": t}), texts))
    assert [a[1]["action"] for a in answers] == ["allow", "block"] * 12
    result = guard.audit.verify()
    assert result.ok and result.rows == 24


@pytest.mark.slow  # a process of its own
def test_guard_serve_command(bank_file, tmp_path):
    """`guard serve` as an operator starts it: it answers on the port it was given, and stops on SIGTERM."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "token").write_text("operator-token-0123456789\n")
    proc = subprocess.Popen([sys.executable, "-m", "guard.adapters.cli", "serve", "--bank", str(bank_file),
                             "--port", str(port), "--allow-path", str(tmp_path), "--token-file", str(tmp_path / "token")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, answer = time.monotonic() + 120, None
        while answer is None:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    answer = json.loads(r.read())
            except OSError:
                time.sleep(0.2)
        assert answer["status"] == "ok" and answer["versions"]["encoder"].startswith("tiny-test")
        prompt = urllib.request.Request(f"http://127.0.0.1:{port}/v1/prompt", data=b'{"text": "mario"}',
                                        headers={"Authorization": "Bearer operator-token-0123456789"})
        with urllib.request.urlopen(prompt, timeout=30) as r:
            assert json.loads(r.read())["action"] == "block"
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(urllib.request.Request(prompt.full_url, data=prompt.data), timeout=30)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert "Traceback" not in stderr


def test_guard_serve_refuses_bad_settings(bank_file, tmp_path, capsys):
    from guard.adapters.cli import main

    assert main(["serve", "--bank", str(bank_file), "--allow-path", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "token").write_text("short")
    assert main(["serve", "--bank", str(bank_file), "--token-file", str(tmp_path / "token")]) == 2
    assert "shorter than 16" in capsys.readouterr().err


@pytest.mark.slow  # a process of its own
def test_a_takedown_added_by_another_process_is_honoured_at_once(served, bank_file, encoder, tmp_path):
    """A running service and a second Guard on one state folder see a `guard takedown add` made
    by a separate CLI process at their next check, without a restart."""
    service, guard, allowed = served
    lora = mf.write(allowed / "style.safetensors", mf.kohya_tensors(mf.lora_weights(9)))
    second = Guard(Bank.load(bank_file), Policy.load(), encoder, state=tmp_path / "state")
    assert service.call("/v1/model/path", {"path": str(lora)})[1]["action"] == "allow"
    assert second.check_model_file(lora).action.value == "allow"
    proc = subprocess.run([sys.executable, "-m", "guard.adapters.cli", "takedown", "add", str(lora), "--notice", "DMCA-77",
                           "--bank", str(bank_file), "--state", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    status, verdict, _ = service.call("/v1/model/path", {"path": str(lora)})
    assert status == 200 and verdict["action"] == "block"
    assert verdict["findings"][0]["evidence"]["notice"] == "DMCA-77"
    assert second.check_model_file(lora).action.value == "block"
    proc = subprocess.run([sys.executable, "-m", "guard.adapters.cli", "takedown", "remove", "--notice", "DMCA-77",
                           "--state", str(tmp_path / "state"), "--bank", str(bank_file)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert service.call("/v1/model/path", {"path": str(lora)})[1]["action"] == "allow"


def test_the_openapi_schema_validates_and_declares_bodies_bearer_and_verdicts(bank_file, encoder, tmp_path):
    from openapi_spec_validator import validate

    guard = Guard(Bank.load(bank_file), Policy.load(), encoder)
    service = Service(create_app(guard, token="t" * 32))
    try:
        status, spec, _ = service.call("/openapi.json")
    finally:
        service.stop()
    assert status == 200
    validate(spec)  # raises on an invalid OpenAPI document
    paths = spec["paths"]
    body = paths["/v1/prompt"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/PromptRequest"}
    assert "text" in spec["components"]["schemas"]["PromptRequest"]["required"]
    assert "application/octet-stream" in paths["/v1/model"]["post"]["requestBody"]["content"]
    ok = paths["/v1/prompt"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/VerdictModel"}
    assert {"404", "401", "413"} <= set(paths["/v1/model/path"]["post"]["responses"])
    [scheme] = spec["components"]["securitySchemes"].values()
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert all(op.get("security") for route, ops in paths.items() if route.startswith("/v1") for op in ops.values())
    assert "security" not in paths["/healthz"]["get"]
    assert not [r for ops in paths.values() for op in ops.values() for r in op["responses"] if r == "422"]


def test_a_query_parameter_of_the_wrong_type_answers_400(served):
    service, guard, _ = served
    rows = len(list(guard.audit.rows()))
    status, answer, _ = service.call("/v1/model", b"x", metadata_only="maybe")
    assert status == 400 and "metadata_only" in answer["detail"]
    assert len(list(guard.audit.rows())) == rows


def test_the_docs_render_offline_in_a_real_browser(bank_file, encoder, tmp_path):
    """Swagger UI from the package's own files: chromium, with every other host unreachable,
    renders the operations (a CDN page would stay blank)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium): the docs test runs in CI")
    guard = Guard(Bank.load(bank_file), Policy.load(), encoder)
    service = Service(create_app(guard))
    try:
        pages = {}
        for page in ("/docs", "/redoc"):
            done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=" +
                                   str(tmp_path / "profile"), "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                                   "--virtual-time-budget=15000", "--dump-dom", service.url + page],
                                  capture_output=True, text=True, timeout=120)
            pages[page] = done.stdout
    finally:
        service.stop()
    assert "opblock-summary-path" in pages["/docs"] and "/v1/prompt" in pages["/docs"], pages["/docs"][-2000:]
    assert "api-content" in pages["/redoc"] and "/v1/model/path" in pages["/redoc"], pages["/redoc"][-2000:]


def test_concurrent_prompts_are_screened_together_each_with_its_own_account(bank_file, encoder, tmp_path):
    """24 clients at once: fewer encoder forwards than requests, and every verdict is the one
    check_prompt gives that prompt for that account (recorded with it)."""
    guard = Guard(Bank.load(bank_file), Policy.load(), encoder, state=tmp_path / "state")
    forwards = []
    real = guard.encoder.encode_texts

    def counted(texts):  # the real encoder, counted
        forwards.append(len(texts))
        return real(texts)

    guard.encoder.encode_texts = counted
    service = Service(create_app(guard))
    cases = [("Ultraman over Tokyo", "alice", "block"), ("Ultraman over Tokyo", "tsuburaya-official", "allow"),
             ("a quiet harbor at dawn, oil painting", "bob", "allow")] * 8
    try:
        with ThreadPoolExecutor(len(cases)) as pool:
            answers = list(pool.map(lambda c: service.call("/v1/prompt", {"text": c[0], "account": c[1]}), cases))
    finally:
        service.stop()
    assert [a[1]["action"] for a in answers] == [c[2] for c in cases]
    assert len(forwards) < len(cases), forwards  # batched: some forward embedded several prompts
    rows = {(r["subject"], r["account"]): r["action"] for r in guard.audit.rows()}
    assert rows[("Ultraman over Tokyo", "tsuburaya-official")] == "allow" and rows[("Ultraman over Tokyo", "alice")] == "block"
