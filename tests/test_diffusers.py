"""The diffusers hooks on a real (tiny) Stable Diffusion pipeline."""

import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from guard import Bank, Guard, Policy, Signal
from guard.bank import build_bank
from guard.adapters.diffusers import GuardBlocked, load_pipeline, protect

from .tiny_pipeline import preview_at, tiny_lora, tiny_pipeline

STEPS = 6
CALL = dict(num_inference_steps=STEPS, height=64, width=64)


@pytest.fixture(scope="module")
def made(tmp_path_factory, encoder):
    """A pipeline, the image it makes for a fixed prompt and seed, and a bank built from that
    image (plus the demo characters), so a real generation can match a protected character."""
    folder = tmp_path_factory.mktemp("pipe")
    image, preview = preview_at(tiny_pipeline(folder), "a quiet harbour", 3, step=2, size=64, **CALL)
    refs = folder / "refs"
    (refs / "harbour-hero").mkdir(parents=True)
    # A random-weight pipeline's outputs all look alike to the tiny encoder (cosine 0.96-0.99),
    # so this character only matches (near-)exact copies: its bank thresholds say so.
    (refs / "harbour-hero" / "character.toml").write_text(
        'aliases = ["Harbour Hero"]\nholder = "Example"\n[thresholds.clip_image]\nflag = 0.995\nblock = 0.998\n')
    image.save(refs / "harbour-hero" / "final.png")
    Image.fromarray((preview * 255).round().astype(np.uint8)).save(refs / "harbour-hero" / "preview.png")
    bank = folder / "bank.safetensors"
    build_bank(refs, encoder).save(bank)
    return folder, bank


@pytest.fixture()
def pipe_and_guard(made, encoder, tmp_path):
    folder, bank = made
    guard = Guard(Bank.load(bank), Policy.load(), encoder, state=tmp_path / "state")
    pipe = protect(tiny_pipeline(folder), guard, account="alice")
    calls = []
    pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    return pipe, guard, calls


def test_blocked_prompt_raises_before_the_unet_runs(pipe_and_guard):
    pipe, guard, calls = pipe_and_guard
    with pytest.raises(GuardBlocked) as info:
        pipe(["a dog", "harbour hero on a boat"], **CALL)
    assert calls == [] and info.value.verdict.findings[0].subject == "harbour-hero"
    assert type(pipe).__name__ == "StableDiffusionPipeline"


def test_clean_generation_runs_and_reports(pipe_and_guard):
    pipe, guard, calls = pipe_and_guard
    out = pipe(["a dog", "a tree"], num_images_per_prompt=2, generator=torch.Generator().manual_seed(1), **CALL)
    assert len(out.images) == 4 and len(out.guard_verdicts) == 4 and out.guard_blocked == [False] * 4
    assert len(calls) == STEPS


def test_matching_output_is_replaced_and_reported(pipe_and_guard):
    pipe, guard, _ = pipe_and_guard
    out = pipe("a quiet harbour", generator=torch.Generator().manual_seed(3), **CALL)
    assert out.guard_blocked == [True]
    assert out.guard_verdicts[0].findings[0].subject == "harbour-hero"
    assert np.asarray(out.images[0]).max() == 0  # replaced by black
    for output_type in ("np", "pt"):
        out = pipe("a quiet harbour", generator=torch.Generator().manual_seed(3), output_type=output_type, **CALL)
        assert out.guard_blocked == [True] and float(out.images[0].max()) == 0.0
    with pytest.raises(GuardBlocked, match="latent output"):
        pipe("a quiet harbour", output_type="latent", **CALL)


def test_early_abort_stops_at_the_first_check_and_user_callback_runs(made, encoder, tmp_path):
    folder, bank = made
    guard = Guard(Bank.load(bank), Policy.load(), encoder)
    pipe = protect(tiny_pipeline(folder), guard, early_abort_every=2, preview_size=64)
    calls, seen = [], []
    pipe.unet.register_forward_hook(lambda *a: calls.append(1))

    def mine(p, step, t, tensors):
        seen.append(step)
        return tensors

    with pytest.raises(GuardBlocked) as info:
        pipe("a quiet harbour", generator=torch.Generator().manual_seed(3), callback_on_step_end=mine, **CALL)
    assert info.value.step == 2 and len(calls) == 2 < STEPS
    assert seen[:2] == [0, 1]


def test_clean_lora_loads_and_bad_ones_are_refused(pipe_and_guard, tmp_path):
    pipe, guard, _ = pipe_and_guard
    pipe.load_lora_weights(str(tiny_lora(tmp_path / "clean.safetensors", 1)), adapter_name="clean")
    assert pipe.get_list_adapters() == {"unet": ["clean"]}

    tagged = tiny_lora(tmp_path / "tagged.safetensors", 2, {"ss_tag_frequency": '{"5_x": {"harbour hero": 12}}'})
    with pytest.raises(GuardBlocked) as info:
        pipe.load_lora_weights(str(tagged), adapter_name="tagged")
    assert info.value.verdict.findings[0].signal is Signal.METADATA

    taken = tiny_lora(tmp_path / "taken.safetensors", 3)
    guard.take_down(taken, "N-9", character="harbour-hero")
    with pytest.raises(GuardBlocked):
        pipe.load_lora_weights(str(taken), adapter_name="taken")
    from safetensors.torch import load_file
    with pytest.raises(GuardBlocked):  # the same weights as a state dict
        pipe.load_lora_weights(load_file(taken), adapter_name="taken2")

    evil = tmp_path / "evil.bin"
    payload = pickle.dumps({"w": _Payload()}, protocol=2)
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", payload)
    with pytest.raises(GuardBlocked) as info:
        pipe.load_lora_weights(str(evil), adapter_name="evil")
    assert info.value.verdict.findings[0].signal is Signal.PICKLE
    assert pipe.get_list_adapters() == {"unet": ["clean"]}  # nothing else was loaded


class _Payload:
    def __reduce__(self):
        return print, ("would run",)


def test_flagged_lora_loads_and_is_recorded(made, encoder, tmp_path):
    folder, bank = made
    policy = Policy.from_dict({"signals": {"metadata": {"action": "flag"}}})
    guard = Guard(Bank.load(bank), policy, encoder, state=tmp_path / "state")
    pipe = protect(tiny_pipeline(folder), guard, account="bob")
    tagged = tiny_lora(tmp_path / "tagged.safetensors", 2, {"ss_tag_frequency": '{"5_x": {"harbour hero": 12}}'})
    pipe.load_lora_weights(str(tagged), adapter_name="tagged")
    assert pipe.get_list_adapters() == {"unet": ["tagged"]}
    row = list(guard.audit.rows())[-1]
    assert row["action"] == "flag" and row["account"] == "bob" and row["surface"] == "model_file"


def test_prompt_embeds_and_steer(made, encoder, tmp_path):
    folder, bank = made
    guard = Guard(Bank.load(bank), Policy.from_dict({"text": {"steer": True}}), encoder, state=tmp_path)
    pipe = protect(tiny_pipeline(folder), guard)
    embeds = torch.zeros(1, 77, 32)
    out = pipe(prompt_embeds=embeds, negative_prompt_embeds=embeds, **CALL)
    assert len(out.images) == 1
    first = next(iter(guard.audit.rows()))
    assert '"screened": false' in first["verdict"]


def test_load_pipeline_refuses_bad_checkpoints(made, encoder, tmp_path):
    from diffusers import StableDiffusionPipeline

    folder, bank = made
    guard = Guard(Bank.load(bank), Policy.load(), encoder)
    evil = tmp_path / "model.ckpt"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": _Payload()}, protocol=2))
    with pytest.raises(GuardBlocked):
        load_pipeline(StableDiffusionPipeline, evil, guard)
    saved = tmp_path / "pipeline"
    tiny_pipeline(folder).save_pretrained(saved)
    pipe = load_pipeline(StableDiffusionPipeline, saved, guard)
    assert getattr(type(pipe), "_guard_protected", False)
    assert pipe("a dog", **CALL).guard_blocked == [False]


def test_example_generation_server_on_loopback(made, encoder, tmp_path):
    import json as _json
    import threading
    import urllib.error
    import urllib.request

    folder, bank = made
    from examples.generation_server import make_server

    guard = Guard(Bank.load(bank), Policy.load(), encoder, state=tmp_path)
    server = make_server(guard, tiny_pipeline(folder), port=0, accounts={"t-carol": "carol", "t-ex": "Example"})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/generate"

    def post(body, token=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(url, data=_json.dumps(body).encode(), method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, _json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, _json.loads(error.read())

    try:
        status, body = post({"prompt": "a dog", "steps": 2}, token="t-carol")
        assert status == 200 and body["image_png_base64"] and body["verdicts"][0]["action"] == "allow"
        status, body = post({"prompt": "Harbour Hero portrait", "steps": 2})
        assert status == 403 and body["verdicts"][0]["findings"][0]["subject"] == "harbour-hero"
        assert post({"nope": 1})[0] == 400
        # The account comes from authentication: a client cannot claim to be someone.
        assert post({"prompt": "a dog", "steps": 2, "account": "carol"})[0] == 400
        assert post({"prompt": "a dog", "steps": 2}, token="forged")[0] == 401
    finally:
        server.shutdown()
    assert {r["account"] for r in guard.audit.rows()} >= {"carol"}


def test_latent_output_follows_the_policy(made, encoder):
    folder, bank = made
    guard = Guard(Bank.load(bank), Policy.from_dict({"generation": {"latent_output": "pass"}}), encoder)
    out = protect(tiny_pipeline(folder), guard)("a dog", output_type="latent", **CALL)
    assert out.images.shape[1] == 4  # latents came back unchecked, as the policy allows
    with pytest.raises(Exception, match="generation.latent_output"):
        Policy.from_dict({"generation": {"latent_output": "sometimes"}})


def test_adapter_decisions_are_in_the_audit_log(made, encoder, tmp_path):
    """Early abort, latent refusal and a folder without weights are decisions: each is recorded."""
    import json

    folder, bank = made
    guard = Guard(Bank.load(bank), Policy.load(), encoder, state=tmp_path / "state")
    pipe = protect(tiny_pipeline(folder), guard, account="dora", early_abort_every=2, preview_size=64)
    with pytest.raises(GuardBlocked) as info:
        pipe("a quiet harbour", generator=torch.Generator().manual_seed(3), **CALL)
    assert info.value.step == 2
    with pytest.raises(GuardBlocked, match="latent output"):
        protect(tiny_pipeline(folder), guard, account="dora")("a dog", output_type="latent", **CALL)
    empty = tmp_path / "empty_pipeline"
    empty.mkdir()
    with pytest.raises(GuardBlocked):
        load_pipeline(type(pipe), empty, guard, account="dora")
    rows = [json.loads(r["verdict"]) | {"account": r["account"]} for r in guard.audit.rows()]
    aborted = [r for r in rows if r.get("facts", {}).get("early_abort_step") == 2]
    assert aborted and aborted[0]["action"] == "block" and aborted[0]["findings"][0]["subject"] == "harbour-hero"
    latent = [r for r in rows if r["subject"] == "latents"]
    assert latent and latent[0]["action"] == "block" and "cannot be checked" in json.dumps(latent[0])
    missing = [r for r in rows if r["subject"] == str(empty)]
    assert missing and missing[0]["action"] == "block" and "no weight files" in json.dumps(missing[0])
    assert {r["account"] for r in aborted + latent + missing} == {"dora"}
    assert guard.audit.verify().ok


def test_an_empty_or_short_negative_list_drops_no_prompt(pipe_and_guard):
    """negative_prompt=[] (accepted by SD 1.5 when guidance_scale <= 1) or a list shorter than
    the prompts used to zip the prompts away: every prompt is screened, the UNet never runs."""
    pipe, guard, calls = pipe_and_guard
    for negative, prompts in (([], ["harbour hero on a boat"]),
                              (["blurry"], ["a dog", "harbour hero on a boat"])):
        before = len(list(guard.audit.rows()))
        with pytest.raises(GuardBlocked) as info:
            pipe(prompts, negative_prompt=negative, guidance_scale=1.0, **CALL)
        assert calls == [] and info.value.verdict.findings[0].subject == "harbour-hero", negative
        assert len(list(guard.audit.rows())) - before == len(prompts)


def test_steering_keeps_a_string_negative_a_string(made, encoder):
    folder, bank = made
    guard = Guard(Bank.load(bank), Policy.from_dict({"text": {"steer": True},
                                                     "signals": {"alias": {"action": "flag"}}}), encoder)
    pipe = protect(tiny_pipeline(folder), guard)
    seen = []
    encode = pipe.encode_prompt

    def spy(prompt, device, num_images, cfg, negative_prompt=None, **kwargs):
        seen.append((prompt, negative_prompt))
        return encode(prompt, device, num_images, cfg, negative_prompt, **kwargs)

    pipe.encode_prompt = spy
    pipe("harbour hero on a boat", negative_prompt="blurry", **CALL)  # CFG on: a str negative (was a TypeError)
    [(prompt, negative)] = seen
    assert isinstance(prompt, str) and isinstance(negative, str)
    assert negative.startswith("blurry, ") and "Harbour Hero" in negative


@pytest.mark.parametrize("output_type", [None, "numpy", "PIL", "pil", "np", "pt"])
def test_a_blocked_output_is_replaced_whatever_the_output_type(made, encoder, output_type):
    """diffusers treats an output_type it does not know as "np"; the guard reads what came back."""
    folder, bank = made
    guard = Guard(Bank.load(bank), Policy.load(), encoder)
    pipe = protect(tiny_pipeline(folder), guard)
    out = pipe("a quiet harbour", generator=torch.Generator().manual_seed(3), output_type=output_type, **CALL)
    assert out.guard_blocked == [True]
    assert float(np.asarray(out.images[0]).max()) == 0.0
    images, _ = protect(tiny_pipeline(folder), guard)("a quiet harbour", generator=torch.Generator().manual_seed(3),
                                                      output_type=output_type, return_dict=False, **CALL)
    assert float(np.asarray(images[0]).max()) == 0.0


def test_early_abort_fires_at_the_default_preview_size(made, encoder):
    """The preview follows the image (64 px here), so the default settings catch it."""
    folder, bank = made
    guard = Guard(Bank.load(bank), Policy.from_dict({"generation": {"early_abort_every": 2}}), encoder)
    pipe = protect(tiny_pipeline(folder), guard)
    calls = []
    pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(GuardBlocked) as info:
        pipe("a quiet harbour", generator=torch.Generator().manual_seed(3), **CALL)
    assert info.value.step == 2 and len(calls) == 2


class _System:
    def __reduce__(self):
        import os
        return os.system, ("echo pwned",)


def test_a_clean_bin_folder_loads_and_a_poisoned_one_does_not(made, encoder, tmp_path):
    """A torch zip's raw storages may start with 0x80; only its data.pkl is a pickle."""
    from diffusers import StableDiffusionPipeline

    folder, bank = made
    guard = Guard(Bank.load(bank), Policy.load(), encoder)
    saved = tmp_path / "bin_pipeline"
    tiny_pipeline(folder).save_pretrained(saved, safe_serialization=False)
    assert (saved / "unet" / "diffusion_pytorch_model.bin").is_file()
    pipe = load_pipeline(StableDiffusionPipeline, saved, guard)
    assert pipe("a dog", **CALL).guard_blocked == [False]

    weights = saved / "unet" / "diffusion_pytorch_model.bin"
    with zipfile.ZipFile(weights, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": _System()}, protocol=2))
    with pytest.raises(GuardBlocked) as info:
        load_pipeline(StableDiffusionPipeline, saved, guard)
    assert info.value.verdict.findings[0].signal is Signal.PICKLE


def test_a_symlinked_component_folder_is_scanned(made, encoder, tmp_path):
    """from_pretrained follows a symlinked component folder, so the scan does too."""
    from diffusers import StableDiffusionPipeline

    folder, bank = made
    guard = Guard(Bank.load(bank), Policy.load(), encoder, state=tmp_path / "state")
    saved = tmp_path / "pipeline"
    tiny_pipeline(folder).save_pretrained(saved)
    elsewhere = tmp_path / "elsewhere_unet"
    (saved / "unet").rename(elsewhere)
    (saved / "unet").symlink_to(elsewhere, target_is_directory=True)
    guard.take_down(elsewhere / "diffusion_pytorch_model.safetensors", "N-7", character="harbour-hero")
    with pytest.raises(GuardBlocked) as info:
        load_pipeline(StableDiffusionPipeline, saved, guard)
    assert info.value.verdict.subject.endswith("unet/diffusion_pytorch_model.safetensors")
    (saved / "loop").symlink_to(saved, target_is_directory=True)  # a link loop ends the walk, not the scan
    with pytest.raises(GuardBlocked):
        load_pipeline(StableDiffusionPipeline, saved, guard)
