"""Keep-down of LoRAs across the naming families and re-upload recipes of this field.

Layer names of the original layouts come from ComfyUI's own key maps (``../shared/vendor``);
without ComfyUI's source these tests skip outside CI and fail in CI.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from guard import Bank, Guard, Policy
from guard.extract.lora import Fingerprint
from guard.extract.lora_keys import canonical_layer
from guard.extract.model_file import inspect_model
from guard.testing import loras as L
from guard.testing.comfyui import comfy_utils
from guard.verdict import Action, Signal, Surface

UTILS = comfy_utils()
if UTILS is None:
    if os.environ.get("CI"):
        raise RuntimeError("ComfyUI's source (../shared/vendor) and einops are needed for the keep-down tests in CI")
    pytest.skip("ComfyUI's source or einops is absent: keep-down naming tests skipped outside CI",
                allow_module_level=True)

ARCHS = [L.sd1(), L.sdxl(), L.flux()]


def fingerprint_of(tensors, path) -> Fingerprint:
    save_file(tensors, str(path))
    return inspect_model(path).fingerprint


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_the_same_weights_in_every_naming_family_score_as_one(arch, tmp_path):
    w = L.make_lora(arch, 3, 8, "decaying")
    families = [f for f in L.FAMILIES if arch.te_slots or f not in ("comfyui+kohya-te", "diffusers-old")]
    prints = {f: fingerprint_of(L.write(w, arch, f), tmp_path / f"{f}.safetensors") for f in families}
    assert {len(p.layers) for p in prints.values()} == {len(arch.layers)}
    for a, b in itertools.permutations(families, 2):
        assert prints[a].contains(prints[b]).score >= 0.99, (a, b)


@pytest.mark.parametrize("arch", [L.sd1(), L.sdxl()], ids=lambda a: a.name)
def test_canonical_names_agree_with_comfyuis_key_map(arch):
    """Every UNet layer, under each name ComfyUI's LoRA loader accepts for it (comfy/lora.py:
    ``lora_unet_`` + LDM name, ``diffusion_model.`` + LDM name, ``lycoris_`` / ``lora_unet_`` +
    diffusers name, ``unet.`` + diffusers name, the bare diffusers name), is one layer."""
    mapping = UTILS.unet_to_diffusers(dict(arch.unet_config))
    checked = 0
    for diffusers, ldm in mapping.items():
        if not diffusers.endswith(".weight") or not ldm.endswith(".weight"):
            continue
        d, o = diffusers[:-len(".weight")], ldm[:-len(".weight")]
        names = {canonical_layer(n) for n in (f"lora_unet_{o.replace('.', '_')}", f"diffusion_model.{o}",
                                              f"lycoris_{d.replace('.', '_')}", f"lora_unet_{d.replace('.', '_')}",
                                              f"unet.{d}", d)}
        assert len(names) == 1, (diffusers, names)
        checked += 1
    assert checked > 100


def test_flux_names_agree_with_comfyuis_key_map():
    """Flux's unfused layers under ComfyUI's accepted names (``transformer.``, ``lycoris_``,
    ``lora_transformer_``, ``diffusion_model.`` + original, ``lora_unet_`` + original)."""
    mapping = UTILS.flux_to_diffusers(dict(L.flux().flux_config))
    checked = 0
    for diffusers, original in mapping.items():
        if not diffusers.endswith(".weight") or isinstance(original, tuple) or not original.endswith(".weight"):
            continue
        d, o = diffusers[:-len(".weight")], original[:-len(".weight")]
        names = {canonical_layer(n) for n in (f"transformer.{d}", f"lycoris_{d.replace('.', '_')}",
                                              f"lora_transformer_{d.replace('.', '_')}", f"diffusion_model.{o}",
                                              f"lora_unet_{o.replace('.', '_')}")}
        assert len(names) == 1, (diffusers, names)
        checked += 1
    assert checked > 10


def test_text_encoders_are_one_layer_whatever_slot_names_them():
    clip = "text_model.encoder.layers.3.self_attn.q_proj"
    assert len({canonical_layer(n) for n in (f"lora_te_{clip.replace('.', '_')}", f"lora_te1_{clip.replace('.', '_')}",
                                             f"text_encoder.{clip}", f"text_encoders.clip_l.transformer.{clip}")}) == 1
    assert len({canonical_layer(n) for n in (f"lora_te2_{clip.replace('.', '_')}", f"text_encoder_2.{clip}",
                                             f"text_encoders.clip_g.transformer.{clip}")}) == 1
    t5 = "encoder.block.2.layer.0.SelfAttention.q"
    names = {canonical_layer(n) for n in (f"lora_te3_{t5.replace('.', '_')}", f"lora_te2_{t5.replace('.', '_')}",
                                          f"text_encoder_2.{t5}", f"text_encoder_3.{t5}",
                                          f"text_encoders.t5xxl.transformer.{t5}")}
    assert names == {"text_encoder_t5_encoder_block_2_layer_0_SelfAttention_q"}


def test_extra_layers_never_dilute_and_a_half_is_the_same_work(tmp_path):
    arch = L.sd1()
    w = L.make_lora(arch, 5, 8)
    taken = fingerprint_of(L.write(w, arch, "kohya"), tmp_path / "t.safetensors")
    padded = L.write(w, arch, "kohya")
    g = torch.Generator().manual_seed(0)
    for i in range(300):  # more junk than real layers, as strong as them
        padded[f"lora_unet_decoy_{i}_proj.lora_up.weight"] = torch.randn(128, 8, generator=g).half() * 0.05
        padded[f"lora_unet_decoy_{i}_proj.lora_down.weight"] = torch.randn(8, 128, generator=g).half() * 0.1
    padded_match = fingerprint_of(padded, tmp_path / "p.safetensors").contains(taken)
    assert padded_match.score == pytest.approx(1.0, abs=1e-3) and padded_match.shared == len(arch.layers)
    half = dict(list(w.items())[::2])
    half_match = fingerprint_of(L.write(half, arch, "kohya"), tmp_path / "h.safetensors").contains(taken, 0.5)
    assert half_match.score > 0.9 and half_match.coverage < 0.75
    # a tenth of the layers is not "substantial": the score falls in proportion
    tenth = dict(list(w.items())[::10])
    assert fingerprint_of(L.write(tenth, arch, "kohya"), tmp_path / "x.safetensors").contains(taken, 0.5).score < 0.5


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_recipes_stay_matched_and_unrelated_loras_do_not(arch, tmp_path):
    policy = Policy.load()
    thresholds = policy.layers(Signal.FINGERPRINT, Surface.MODEL_FILE)
    block, flag = thresholds["block"], thresholds["flag"]
    w = L.make_lora(arch, 11, 8, "decaying")
    taken = fingerprint_of(L.write(w, arch, "kohya"), tmp_path / "t.safetensors")
    other = L.make_lora(arch, 12, 8, "decaying")
    recipes = {"lorasave": L.lora_save(w, arch, 8), "resize 4": L.write(L.resize(w, 4), arch, "kohya"),
               "merge 0.5": L.write(L.merge(w, other, 0.5, 0.5), arch, "kohya"),
               "comfyui": L.write(w, arch, "comfyui")}
    for label, tensors in recipes.items():
        assert fingerprint_of(tensors, tmp_path / "r.safetensors").contains(taken).score >= block, label
    for seed in range(20):
        unrelated = L.make_lora(arch, 1000 + seed, (4, 8, 16)[seed % 3], ("flat", "decaying")[seed % 2],
                                down_seed=11 if seed % 4 == 0 else None)  # some share the takedown's initialisation
        assert fingerprint_of(L.write(unrelated, arch, "kohya"), tmp_path / "u.safetensors").contains(taken).score < flag


def test_fingerprints_keep_their_energies_and_old_ones_still_compare(tmp_path):
    arch = L.flux()
    w = L.make_lora(arch, 2, 8)
    fp = fingerprint_of(L.write(w, arch, "kohya"), tmp_path / "t.safetensors")
    again = Fingerprint.from_bytes(fp.to_bytes())
    assert again.energy is not None and set(again.energy) == set(fp.layers)
    assert again.contains(fp).score == pytest.approx(1.0, abs=1e-3)
    old = Fingerprint({n: v for n, v in fp.layers.items()}, fp.scheme)  # stored before energies were kept
    legacy = Fingerprint.from_bytes(old.to_bytes())
    assert legacy.energy is None and fp.contains(legacy).score == pytest.approx(1.0, abs=1e-3)
    renamed = Fingerprint({"text_encoder_2_encoder_block_0_layer_0_SelfAttention_q": np.ones(64, np.float32) / 8})
    assert list(Fingerprint.from_bytes(renamed.to_bytes()).layers) == [
        "text_encoder_t5_encoder_block_0_layer_0_SelfAttention_q"]


def test_a_comfyui_lorasave_of_a_taken_down_lora_is_blocked_with_evidence(bank_file, encoder, tmp_path):
    guard = Guard(Bank.load(bank_file), Policy.load(), encoder, state=tmp_path / "state")
    arch = L.sdxl()
    w = L.make_lora(arch, 21, 16, "decaying")
    save_file(L.write(w, arch, "kohya"), str(tmp_path / "taken.safetensors"), metadata={"ss_output_name": "hero"})
    guard.take_down(tmp_path / "taken.safetensors", "DMCA-77", character="ultraman")
    reupload = tmp_path / "totally_new.safetensors"
    tensors = L.lora_save(w, arch, 8)
    g = torch.Generator().manual_seed(1)
    for i in range(129):
        tensors[f"diffusion_model.decoy.{i}.lora_up.weight"] = torch.randn(96, 8, generator=g).half() * 0.05
        tensors[f"diffusion_model.decoy.{i}.lora_down.weight"] = torch.randn(8, 96, generator=g).half() * 0.1
    save_file(tensors, str(reupload))
    v = guard.check_model_file(reupload, account="someone")
    f = next(f for f in v.findings if f.signal is Signal.FINGERPRINT)
    assert v.action is Action.BLOCK and f.subject == "takedown:DMCA-77"
    assert f.evidence["layers_compared"] == len(arch.layers) and f.evidence["layers_not_in_takedown"] == 129
    assert f.evidence["coverage"] == pytest.approx(1.0)
