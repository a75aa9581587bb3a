"""The diffusers hooks tried as an attacker would: every prompt argument, every loader,
converted pipelines, on tiny SD 1.5 / SDXL / SD3 / Flux pipelines built from configs.

Each test counts the denoiser's forward calls (0 for anything blocked before generation)
and reads the audit log, where every decision must be."""

from __future__ import annotations

import copy
import inspect
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from guard import Bank, Guard, Policy
from guard.adapters.diffusers import GuardBlocked, protect
from guard.adapters.diffusers.prompts import prompt_names

from .tiny_pipeline import FAMILIES, tiny_lora, tiny_pipeline

BAD = "ultraman fighting a monster"


def _guard(bank_file, encoder, tmp_path, policy: dict | None = None) -> Guard:
    return Guard(Bank.load(bank_file), Policy.from_dict(policy or {}), encoder, state=tmp_path / "state")


def _denoiser_calls(pipe) -> list:
    calls: list = []
    (getattr(pipe, "unet", None) or pipe.transformer).register_forward_hook(lambda *a: calls.append(1))
    return calls


def _rows(guard: Guard) -> list[dict]:
    return [json.loads(r["verdict"]) | {"account": r["account"]} for r in guard.audit.rows()]


@pytest.fixture(params=list(FAMILIES))
def family(request, tmp_path, bank_file, encoder):
    make, call = FAMILIES[request.param]
    guard = _guard(bank_file, encoder, tmp_path)
    pipe = protect(make(tmp_path / "pipe"), guard, account="mallory")
    return request.param, pipe, guard, call, _denoiser_calls(pipe)


def test_every_prompt_argument_is_screened(family):
    name, pipe, guard, call, calls = family
    names = prompt_names(list(inspect.signature(type(pipe).__mro__[1].__call__).parameters))
    assert names == {"sd15": ["prompt"], "sdxl": ["prompt", "prompt_2"], "sd3": ["prompt", "prompt_2", "prompt_3"],
                     "flux": ["prompt", "prompt_2"]}[name]
    for argument in names:
        texts = {n: "a dog" for n in names} | {argument: ["a dog", BAD] if argument == "prompt" else BAD}
        with pytest.raises(GuardBlocked) as info:
            pipe(**texts, **call)
        assert info.value.verdict.subject == BAD and info.value.verdict.findings[0].subject == "ultraman"
    # An empty or short negative list drops no prompt (SDXL, SD3 and Flux take [] by default).
    for negative in ([], ["blurry"]):
        with pytest.raises(GuardBlocked):
            pipe(["a dog", BAD], negative_prompt=negative, **call)
    assert calls == []
    blocked = [r for r in _rows(guard) if r["subject"] == BAD]
    assert len(blocked) == len(names) + 2 and {r["action"] for r in blocked} == {"block"}
    assert {r["account"] for r in blocked} == {"mallory"}

    out = pipe(**{n: "a dog" for n in names}, **call)  # clean: every text screened, then generated
    assert out.guard_blocked == [False] and calls
    assert sum(r["subject"] == "a dog" for r in _rows(guard)) >= len(names)


def test_a_prompt_that_is_not_text_is_refused(family):
    _, pipe, guard, call, calls = family
    with pytest.raises(GuardBlocked, match="cannot screen"):
        pipe(prompt=[("ultraman",)], **call)
    assert calls == [] and _rows(guard)[-1]["action"] == "block"


@pytest.mark.parametrize("rule", ["allow", "block"])
def test_unscreened_prompt_follows_the_policy(rule, tmp_path, bank_file, encoder):
    guard = _guard(bank_file, encoder, tmp_path, {"generation": {"unscreened_prompt": rule}})
    make, call = FAMILIES["sd15"]
    pipe = protect(make(tmp_path / "pipe"), guard)
    calls = _denoiser_calls(pipe)
    embeds = torch.zeros(1, 77, 32)
    if rule == "allow":
        assert pipe(prompt_embeds=embeds, negative_prompt_embeds=embeds, **call).guard_blocked == [False]
        assert calls
    else:
        with pytest.raises(GuardBlocked, match="prompt_embeds"):
            pipe(prompt_embeds=embeds, negative_prompt_embeds=embeds, **call)
        assert calls == []
    first = _rows(guard)[0]
    assert first["facts"]["screened"] is False and first["action"] == rule


def test_steering_needs_a_negative_that_is_used(tmp_path, bank_file, encoder):
    """Steering a flagged prompt away through its negative means nothing with CFG off."""
    guard = _guard(bank_file, encoder, tmp_path, {"text": {"steer": True}, "signals": {"alias": {"action": "flag"}}})
    make, call = FAMILIES["sdxl"]
    pipe = protect(make(tmp_path / "pipe"), guard)
    calls = _denoiser_calls(pipe)
    with pytest.raises(GuardBlocked, match="classifier-free guidance off"):
        pipe("a dog", prompt_2=BAD, guidance_scale=1.0, **call)
    assert calls == []
    seen = []
    encode = pipe.encode_prompt
    pipe.encode_prompt = lambda *a, **k: seen.append(k) or encode(*a, **k)
    pipe("a dog", prompt_2=BAD, negative_prompt="blurry", **call)
    assert seen[0]["negative_prompt"] == "blurry" and "Ultraman" in seen[0]["negative_prompt_2"]


# Loaders -----------------------------------------------------------------------------------------
@pytest.fixture()
def sd15(tmp_path, bank_file, encoder):
    guard = _guard(bank_file, encoder, tmp_path)
    pipe = protect(tiny_pipeline(tmp_path / "pipe"), guard, account="mallory")
    return pipe, guard, _denoiser_calls(pipe)


def _tagged(path):
    return tiny_lora(path, 2, {"ss_tag_frequency": '{"5_x": {"ultraman": 12}}'})


def test_a_lora_folder_is_scanned_for_what_diffusers_would_load(sd15, tmp_path):
    """diffusers prefers pytorch_lora_weights.safetensors over a decoy that sorts first."""
    pipe, guard, _ = sd15
    folder = tmp_path / "lora"
    folder.mkdir()
    tiny_lora(folder / "a_decoy.safetensors", 1)
    _tagged(folder / "pytorch_lora_weights.safetensors")
    with pytest.raises(GuardBlocked) as info:
        pipe.load_lora_weights(str(folder), adapter_name="decoyed")
    assert info.value.verdict.subject.endswith("pytorch_lora_weights.safetensors")
    nested = tmp_path / "nested"
    (nested / "sub").mkdir(parents=True)
    _tagged(nested / "sub" / "w.safetensors")
    with pytest.raises(GuardBlocked):
        pipe.load_lora_weights(str(nested), subfolder="sub", weight_name="w.safetensors", adapter_name="sub")
    assert pipe.get_list_adapters() == {}
    clean = tmp_path / "clean"
    clean.mkdir()
    tiny_lora(clean / "pytorch_lora_weights.safetensors", 1)
    pipe.load_lora_weights(str(clean), adapter_name="clean")
    assert pipe.get_list_adapters() == {"unet": ["clean"]}


def _embedding(path, seed: int):
    save_file({"emb_params": torch.randn(1, 32, generator=torch.Generator().manual_seed(seed))}, str(path))
    return path


def test_loaders_beyond_load_lora_weights_are_gated(sd15, tmp_path):
    pipe, guard, calls = sd15
    taken = tiny_lora(tmp_path / "taken.safetensors", 3)
    guard.take_down(taken, "N-1", character="ultraman")
    embedding = _embedding(tmp_path / "ultra-embedding.safetensors", 4)
    guard.take_down(embedding, "N-2", character="ultraman")
    attempts = {
        "load_textual_inversion": lambda: pipe.load_textual_inversion(str(embedding), token="<hero>"),
        "unet.load_lora_adapter": lambda: pipe.unet.load_lora_adapter(str(taken), adapter_name="a"),
        "load_lora_into_unet": lambda: type(pipe).load_lora_into_unet(load_file(taken), None, pipe.unet),
        "unet.load_attn_procs": lambda: pipe.unet.load_attn_procs(str(taken)),
        "text_encoder.load_adapter": lambda: pipe.text_encoder.load_adapter(str(tmp_path), adapter_name="b"),
    }
    (tmp_path / "adapter_model.safetensors").write_bytes(taken.read_bytes())  # a PEFT folder holding it
    for what, attempt in attempts.items():
        with pytest.raises(GuardBlocked):
            attempt()
    assert "<hero>" not in pipe.tokenizer.get_vocab() and pipe.get_list_adapters() == {}
    rows = [r for r in _rows(guard) if r["surface"] == "model_file"]
    assert len(rows) >= len(attempts) and all(r["action"] == "block" for r in rows)

    clean = _embedding(tmp_path / "clean-embedding.safetensors", 5)
    pipe.load_textual_inversion(str(clean), token="<calm>")  # passes the gate, is admitted
    assert pipe("a <calm> dog", num_inference_steps=2, height=64, width=64).guard_blocked == [False]


def test_weights_that_skip_the_loaders_stop_the_call(sd15):
    """peft injection and a token added by hand reach the modules without a loader: the
    next call is refused before the UNet runs."""
    from peft import LoraConfig, inject_adapter_in_model

    pipe, guard, calls = sd15
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["to_q"]), pipe.unet, adapter_name="sneaky")
    with pytest.raises(GuardBlocked, match="adapter sneaky"):
        pipe("a dog", num_inference_steps=2, height=64, width=64)
    pipe.unet.delete_adapters("sneaky")
    pipe.tokenizer.add_tokens(["<sneaky>"])
    with pytest.raises(GuardBlocked, match="token <sneaky>"):
        pipe("a dog", num_inference_steps=2, height=64, width=64)
    assert calls == []
    assert [r["subject"] for r in _rows(guard) if r["action"] == "block"] == ["unet", "tokenizer"]


# Converted pipelines -----------------------------------------------------------------------------
def test_pipelines_built_from_protected_components_are_protected(sd15, tmp_path):
    from diffusers import AutoPipelineForImage2Image, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    pipe, guard, calls = sd15
    image = Image.new("RGB", (64, 64), "gray")
    converted = {
        "Img2Img.from_pipe": StableDiffusionImg2ImgPipeline.from_pipe(pipe),
        "AutoPipelineForImage2Image.from_pipe": AutoPipelineForImage2Image.from_pipe(pipe),
        "Pipeline(**components)": StableDiffusionPipeline(**pipe.components),
    }
    for what, other in converted.items():
        assert getattr(type(other), "_guard_protected", False), what
        extra = {} if isinstance(other, StableDiffusionPipeline) and "image" not in \
            inspect.signature(type(other).__mro__[1].__call__).parameters else {"image": image, "strength": 0.5}
        with pytest.raises(GuardBlocked):
            other(BAD, num_inference_steps=2, **extra)
        with pytest.raises(GuardBlocked):  # a LoRA through the converted pipeline (shared UNet) is gated
            other.load_lora_weights(str(_tagged(tmp_path / "tagged.safetensors")), adapter_name="t")
    assert calls == [] and pipe.get_list_adapters() == {}
    # The deliberate path: the unbound base-class __call__. The denoiser refuses to run.
    with pytest.raises(GuardBlocked, match="denoiser"):
        StableDiffusionPipeline.__call__(pipe, "a dog", num_inference_steps=2, height=64, width=64)
    assert calls == [] and _rows(guard)[-1]["subject"] == "UNet2DConditionModel"


def test_a_deep_copy_stays_protected_and_shares_the_guard(sd15):
    pipe, guard, _ = sd15
    twin = copy.deepcopy(pipe)
    assert twin.unet is not pipe.unet and getattr(type(twin), "_guard_protected", False)
    with pytest.raises(GuardBlocked):
        twin(BAD, num_inference_steps=2, height=64, width=64)
    assert twin("a dog", num_inference_steps=2, height=64, width=64).guard_blocked == [False]
    assert _rows(guard)[-2]["subject"] == "a dog" and guard.audit.verify().ok


# Early abort on every family ---------------------------------------------------------------------
def test_early_abort_previews_every_family(family):
    """Flux's packed latents, SD3's shift factor, a PipelineCallback with its own tensor
    inputs: each early-abort check decodes a preview at the image's own size."""
    from diffusers.callbacks import PipelineCallback

    name, pipe, guard, call, calls = family
    seen: list = []

    class Spy(PipelineCallback):
        tensor_inputs = ["latents", "prompt_embeds"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            seen.append(sorted(callback_kwargs))
            return callback_kwargs

    checked = []
    check_images = guard.check_images
    guard.check_images = lambda images, **k: checked.append([np.asarray(i).shape for i in images]) or check_images(images, **k)
    aborting = protect(pipe, guard, early_abort_every=1)
    out = aborting("a dog", callback_on_step_end=Spy(), **call)
    assert out.guard_blocked == [False] and len(seen) == call["num_inference_steps"]
    assert all("prompt_embeds" in keys for keys in seen)
    previews = checked[:-1]  # the last check is the output's
    assert len(previews) == call["num_inference_steps"] - 1
    assert all(shape == [(64, 64, 3)] for shape in previews), (name, previews)


def test_a_hub_id_or_an_unknown_source_is_refused_and_recorded(sd15):
    pipe, guard, _ = sd15
    with pytest.raises(GuardBlocked, match="download it first"):
        pipe.load_lora_weights("someone/ultraman-lora", adapter_name="hub")
    with pytest.raises(GuardBlocked, match="not a weights source"):
        pipe.unet.load_lora_adapter(12345, adapter_name="odd")
    assert pipe.get_list_adapters() == {}
    assert [r["subject"] for r in _rows(guard)] == ["someone/ultraman-lora", "<int>"]


@pytest.mark.parametrize("key, value", [("unscreened_prompt", "maybe"), ("early_abort_every", -1),
                                        ("preview_edge", 4), ("preview_edge", "big"), ("early_abort", 2)])
def test_generation_settings_are_validated(key, value):
    with pytest.raises(Exception, match=f"generation.{key}"):
        Policy.from_dict({"generation": {key: value}})
