"""The guard inside a real ComfyUI server (../shared/vendor), driven over its HTTP API.

One ComfyUI process is started per session with the node pack installed by
``guard comfyui install``; workflows go through ``POST /prompt`` and ``/history``. Outside CI,
without ComfyUI's source or its requirements, these tests skip saying so; in CI they fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from guard import Guard
from guard.state import AuditLog
from guard.testing import loras as L
from guard.testing.comfyui import comfyui_source, write_tiny_sd15_checkpoint
from tests.canaries import payloads

ROOT = Path(__file__).resolve().parent.parent
BANK = ROOT / "embeddings" / "demo-bank.safetensors"
SOURCE = comfyui_source()
MISSING = "ComfyUI's source" if SOURCE is None else (
    "ComfyUI's requirements (make .venv/.comfyui)" if importlib.util.find_spec("comfyui_frontend_package") is None else None)
if MISSING:
    if os.environ.get("CI"):
        raise RuntimeError(f"{MISSING} missing: the ComfyUI tests must run in CI")
    pytest.skip(f"{MISSING} missing: ComfyUI integration tests skipped outside CI", allow_module_level=True)

pytestmark = pytest.mark.slow  # a real server: ~15 s to start

# A custom node pack of the test's own: nodes that load a model file by a path they build
# themselves (the workflow guard cannot see it; the load gate must).
TEST_NODES = '''
import os
import comfy.utils
import torch

class LoadByPath:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"folder": ("STRING", {"default": ""}), "stem": ("STRING", {"default": ""}),
                             "how": (["comfy", "torch"],)}}
    RETURN_TYPES = ()
    FUNCTION = "load"
    OUTPUT_NODE = True
    CATEGORY = "test"

    def load(self, folder, stem, how):
        path = os.path.join(folder, stem + ".ckpt")
        if how == "comfy":
            comfy.utils.load_torch_file(path)
        else:
            torch.load(path, weights_only=False)
        return {}

NODE_CLASS_MAPPINGS = {"LoadByPath": LoadByPath}
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Comfy:
    def __init__(self, base: Path, log: Path):
        self.base, self.port, self.log = base, _free_port(), log
        self.proc = subprocess.Popen([sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port",
                                      str(self.port), "--base-directory", str(base)], cwd=SOURCE,
                                     stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/object_info/SaveImage", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not start: {log.read_text()[-3000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, graph: dict, account: str | None = "acct-7") -> tuple[int, dict, str]:
        prompt_id = str(uuid.uuid4())
        body = {"prompt": graph, "prompt_id": prompt_id, "client_id": "tests",
                "extra_data": {"guard_account": account} if account else {}}
        req = urllib.request.Request(f"{self.url}/prompt", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read()), prompt_id
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read()), prompt_id

    def history(self, prompt_id: str, wait: float = 60) -> dict:
        deadline = time.time() + wait
        while True:
            with urllib.request.urlopen(f"{self.url}/history/{prompt_id}", timeout=10) as r:
                found = json.loads(r.read()).get(prompt_id)
            if found and found.get("status", {}).get("completed") is not None or time.time() > deadline:
                return found or {}
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _base(root: Path) -> Path:
    for sub in ("custom_nodes", "models/loras", "models/checkpoints", "input", "output"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfyui")
    base = _base(root / "base")
    state, marker, hidden = root / "state", root / "MARKER", root / "hidden"
    hidden.mkdir()
    # the taken-down LoRA (kept outside ComfyUI) and its renamed, stripped, ComfyUI-named re-upload
    arch = L.sd1()
    weights = L.make_lora(arch, 41, 8, "decaying")
    original = root / "hero_v1.safetensors"
    save_file(L.write(weights, arch, "kohya"), str(original), metadata={"ss_output_name": "hero_v1"})
    save_file(L.write(weights, arch, "comfyui"), str(base / "models/loras/fresh_style_v3.safetensors"))
    shutil.copy(ROOT / "examples/demo_models/hero_style_v2.safetensors", base / "models/loras/style_pack.safetensors")
    shutil.copy(ROOT / "examples/demo_models/watercolor_landscapes.safetensors", base / "models/loras/watercolor.safetensors")
    evil = payloads(marker)["os.system p2"]
    (base / "models/checkpoints/base_model.ckpt").write_bytes(evil)
    (hidden / "payload.ckpt").write_bytes(evil)
    write_tiny_sd15_checkpoint(base / "models/checkpoints/tiny_sd15.safetensors")
    shutil.copy(ROOT / "examples/demo_uploads/exact_ultraman_reference.png", base / "input/ref_001.png")
    shutil.copy(ROOT / "examples/demo_uploads/unrelated_1.png", base / "input/photo_7.png")
    (base / "custom_nodes/guard_test_nodes").mkdir()
    (base / "custom_nodes/guard_test_nodes/__init__.py").write_text(TEST_NODES)
    installed = subprocess.run([sys.executable, "-m", "guard.adapters.cli", "comfyui", "install", str(base),
                                "--bank", str(BANK), "--state", str(state)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    server = Comfy(base, root / "comfyui.log")
    # taken down by another process while ComfyUI runs: its next check must see it
    Guard.open(BANK, state=state).take_down(original, "DMCA-C1", character="ultraman")
    server.marker, server.hidden, server.state = marker, hidden, state
    yield server
    server.stop()


def _save(images) -> dict:
    return {"9": {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": "out"}}}


def _load(name: str) -> dict:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": name}}}


def _refusal(body: dict) -> str:
    errors = body.get("node_errors", {}).get("diffusion_guard", {}).get("errors", [])
    return " ".join(e.get("details", "") for e in errors)


@pytest.mark.parametrize("text", ["ultraman fighting a kaiju", "Ultra-Man, city at night", "ウルトラマン",
                                  "u l t r a m a n"])
def test_a_prompt_naming_a_character_is_refused_and_nothing_runs(comfy, text):
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
             "5": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": text}}, **_save(["1", 0])}
    code, body, prompt_id = comfy.post(graph)
    assert code == 400 and "refused by diffusion-guard" in _refusal(body) and "ultraman" in _refusal(body)
    assert "node 5" in _refusal(body)
    assert comfy.history(prompt_id, wait=1) == {}  # never queued: no node executed


def test_a_name_only_in_the_negative_prompt_is_not_refused(comfy):
    graph = {"3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                        "latent_image": ["5", 0], "seed": 1, "steps": 1, "cfg": 7.0,
                                                        "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
             "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "absent.safetensors"}},
             "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
             "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dawn", "clip": ["4", 1]}},
             "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ultraman, blurry", "clip": ["4", 1]}},
             "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}, **_save(["8", 0])}
    code, body, _ = comfy.post(graph)
    assert code == 400 and "diffusion_guard" not in body["node_errors"]  # ComfyUI's own error: no such checkpoint
    graph["6"]["inputs"]["text"] = "ultraman at dawn"
    code, body, _ = comfy.post(graph)
    assert code == 400 and "node 6 (CLIPTextEncode) text: ultraman" in _refusal(body)


@pytest.mark.parametrize("node,inputs,why", [
    ("LoraLoader", {"lora_name": "fresh_style_v3.safetensors"}, "takedown:DMCA-C1 (fingerprint)"),
    ("LoraLoader", {"lora_name": "style_pack.safetensors"}, "ultraman (metadata)"),
    ("CheckpointLoaderSimple", {"ckpt_name": "base_model.ckpt"}, "unsafe-pickle (pickle)"),
])
def test_workflows_naming_refused_model_files_are_refused(comfy, node, inputs, why):
    graph = {"2": {"class_type": node, "inputs": {**inputs, "model": ["4", 0], "clip": ["4", 1],
                                                 "strength_model": 1.0, "strength_clip": 1.0}}, **_save(["2", 0])}
    code, body, prompt_id = comfy.post(graph)
    assert code == 400 and why in _refusal(body), _refusal(body)
    assert comfy.history(prompt_id, wait=1) == {} and not comfy.marker.exists()


@pytest.mark.parametrize("how", ["comfy", "torch"])
def test_a_custom_node_loading_by_its_own_path_is_gated(comfy, how):
    graph = {"1": {"class_type": "LoadByPath", "inputs": {"folder": str(comfy.hidden), "stem": "payload", "how": how}}}
    code, body, prompt_id = comfy.post(graph)
    assert code == 200, body  # the workflow guard cannot see the path; the load gate must
    status = comfy.history(prompt_id)["status"]
    assert status["status_str"] == "error"
    error = next(m[1] for m in status["messages"] if m[0] == "execution_error")
    assert "diffusion-guard refused to load payload.ckpt" in error["exception_message"]
    assert not comfy.marker.exists()


def _output_file(comfy, history: dict) -> Path:
    [image] = history["outputs"]["9"]["images"]
    return comfy.base / "output" / image["subfolder"] / image["filename"]


def test_an_output_matching_the_bank_is_not_written_and_history_says_why(comfy):
    code, body, prompt_id = comfy.post({**_load("ref_001.png"), **_save(["1", 0])})
    assert code == 200, body
    history = comfy.history(prompt_id)
    [verdict] = history["outputs"]["9"]["diffusion_guard"]
    assert verdict["action"] == "block" and verdict["findings"][0]["subject"] == "ultraman"
    written = np.asarray(Image.open(_output_file(comfy, history)).convert("RGB"))
    assert written.std() == 0  # a flat placeholder, not the image


def test_an_unrelated_output_and_a_clean_workflow_run_as_without_the_guard(comfy):
    code, body, prompt_id = comfy.post({**_load("photo_7.png"), **_save(["1", 0])})
    assert code == 200, body
    history = comfy.history(prompt_id)
    assert history["status"]["status_str"] == "success"
    assert history["outputs"]["9"]["diffusion_guard"][0]["action"] == "allow"
    written = np.asarray(Image.open(_output_file(comfy, history)).convert("RGB"))
    source = np.asarray(Image.open(comfy.base / "input/photo_7.png").convert("RGB"))
    assert np.array_equal(written, source)
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 2, "color": 255}},
             "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "watercolor.safetensors", "model": ["4", 0],
                                                          "clip": ["4", 1], "strength_model": 1.0,
                                                          "strength_clip": 1.0}}}
    code, body, _ = comfy.post(graph)  # a clean LoRA: ComfyUI's own validation answers (no checkpoint)
    assert "diffusion_guard" not in body.get("node_errors", {})
    code, body, prompt_id = comfy.post({"1": graph["1"], **_save(["1", 0])})
    assert code == 200 and comfy.history(prompt_id)["status"]["status_str"] == "success"


def _txt2img(positive: str) -> dict:
    """ComfyUI's default text-to-image graph, on the tiny SD1.5 checkpoint, 64x64, 2 steps."""
    return {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["4", 1]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, pikachu", "clip": ["4", 1]}},
            "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                       "latent_image": ["5", 0], "seed": 7, "steps": 2, "cfg": 7.0,
                                                       "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            **_save(["8", 0])}


def test_a_full_text_to_image_run_through_the_real_sampler(comfy):
    """Checkpoint loader, CLIP text encoders, KSampler, VAE decode, SaveImage: ComfyUI's own
    nodes on a checkpoint its model detection reads as SD1.5, with the guard on throughout."""
    code, body, prompt_id = comfy.post(_txt2img("a lighthouse on a cliff at dawn"), account="acct-t2i")
    assert code == 200, body
    history = comfy.history(prompt_id, wait=240)
    assert history["status"]["status_str"] == "success", history["status"]
    [verdict] = history["outputs"]["9"]["diffusion_guard"]
    assert verdict["action"] == "allow" and "SaveImage.images" in verdict["subject"]
    written = Image.open(_output_file(comfy, history))
    assert written.size == (64, 64)  # the sampler's image, written: not a placeholder
    rows = [r for r in AuditLog(comfy.state).rows() if r["account"] == "acct-t2i"]
    assert {r["surface"] for r in rows} >= {"workflow", "generated_image"}
    [workflow] = [json.loads(r["verdict"]) for r in rows if r["surface"] == "workflow"]
    assert workflow["action"] == "allow"
    # the same graph with a character in the positive prompt never reaches the sampler
    code, body, prompt_id = comfy.post(_txt2img("pikachu on a cliff at dawn"), account="acct-t2i")
    assert code == 400 and "pikachu" in _refusal(body) and "node 6" in _refusal(body)
    assert comfy.history(prompt_id, wait=1) == {}


def test_early_abort_stops_the_sampler_at_a_blocked_preview(comfy, tmp_path):
    """A server whose policy checks a preview every step and (for this test) blocks any image:
    the sampler stops after its first step, nothing is written, the decision is recorded."""
    base = _base(tmp_path / "base")
    os.link(comfy.base / "models/checkpoints/tiny_sd15.safetensors", base / "models/checkpoints/tiny_sd15.safetensors")
    policy = tmp_path / "abort.toml"
    policy.write_text('[generation]\nearly_abort_every = 1\n\n[encoders."tiny-test".signals.clip_image]\n'
                      'flag = -1.0\nblock = -1.0\n', encoding="utf-8")
    state = tmp_path / "state"
    installed = subprocess.run([sys.executable, "-m", "guard.adapters.cli", "comfyui", "install", str(base),
                                "--bank", str(BANK), "--state", str(state), "--policy", str(policy)],
                               capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    server = Comfy(base, tmp_path / "comfyui.log")
    try:
        graph = _txt2img("a lighthouse on a cliff at dawn")
        graph["3"]["inputs"]["steps"] = 4
        code, body, prompt_id = server.post(graph, account="acct-abort")
        assert code == 200, body
        history = server.history(prompt_id, wait=240)
        assert history["status"]["status_str"] != "success", history["status"]
        messages = [m[0] for m in history["status"].get("messages", [])]
        assert "execution_interrupted" in messages, messages
        assert not list((base / "output").iterdir())  # SaveImage never ran
    finally:
        server.stop()
    rows = [json.loads(r["verdict"]) for r in AuditLog(state).rows() if r["account"] == "acct-abort"]
    [stopped] = [r for r in rows if r["surface"] == "generated_image"]
    assert stopped["action"] == "block" and stopped["facts"]["early_abort_step"] == 1
    assert "preview step 1" in stopped["subject"]


def test_every_decision_is_in_the_audit_log_with_the_account(comfy):
    comfy.post({**_load("photo_7.png"), **_save(["1", 0])}, account="acct-audit")
    comfy.post({"5": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "ultraman"}}}, account="acct-audit")
    deadline = time.time() + 30
    while True:
        rows = [r for r in AuditLog(comfy.state).rows() if r["account"] == "acct-audit"]
        if {r["surface"] for r in rows} >= {"workflow", "generated_image"} or time.time() > deadline:
            break
        time.sleep(0.3)
    assert {"workflow", "generated_image"} <= {r["surface"] for r in rows}
    assert any(r["surface"] == "workflow" and r["action"] == "block" for r in rows)
    assert AuditLog(comfy.state).verify().ok


@pytest.mark.slow
def test_a_broken_configuration_refuses_every_workflow(tmp_path):
    base = _base(tmp_path / "base")
    installed = subprocess.run([sys.executable, "-m", "guard.adapters.cli", "comfyui", "install", str(base),
                                "--bank", str(BANK)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    config = base / "custom_nodes/diffusion_guard/diffusion_guard.toml"
    config.write_text(config.read_text().replace(str(BANK), str(tmp_path / "gone.safetensors")))
    server = Comfy(base, tmp_path / "comfyui.log")
    try:
        graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                 **_save(["1", 0])}
        code, body, prompt_id = server.post(graph)
        assert code == 400 and "every workflow is refused" in _refusal(body) and "gone.safetensors" in _refusal(body)
        assert server.history(prompt_id, wait=1) == {} and not list((base / "output").iterdir())
    finally:
        server.stop()
