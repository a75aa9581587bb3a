"""The model-file gate on real files: formats, metadata audit, hashes, fingerprints, takedowns, scan."""

import hashlib
import json

import pytest
import torch

from guard import Action, Bank, Guard, Policy, Signal
from guard.adapters.cli import main
from guard.extract.lora_keys import canonical_layer
from guard.extract.model_file import inspect_model

from . import model_files as mf


@pytest.fixture()
def lora(tmp_path):
    return mf.write(tmp_path / "ultra_lora.safetensors", mf.kohya_tensors(mf.lora_weights(1)), mf.kohya_metadata())


@pytest.fixture()
def state_guard(bank_file, encoder, tmp_path):
    return Guard(Bank.load(bank_file), Policy.load(), encoder, state=tmp_path / "state")


def test_kohya_lora_with_character_tags_is_blocked_with_evidence(guard, lora):
    v = guard.check_model_file(lora)
    assert v.action is Action.BLOCK
    tag = next(f for f in v.findings if f.evidence.get("tag") == "ultraman")
    assert (tag.subject, tag.signal) == ("ultraman", Signal.METADATA)
    assert tag.evidence["key"] == "ss_tag_frequency" and tag.evidence["count"] == 37
    assert tag.evidence["share"] == pytest.approx(37 / 40)
    assert any(f.evidence.get("key") == "ss_dataset_dirs" for f in v.findings)
    assert v.facts["format"] == "kohya-lora" and v.facts["base_model"] == "sd1"


def test_clean_lora_is_allowed_and_hashes_match_hashlib(guard, tmp_path):
    path = mf.write(tmp_path / "clean.safetensors", mf.kohya_tensors(mf.lora_weights(2)),
                    mf.kohya_metadata({"1girl": 30, "landscape": 12}, folder="5_scenery"))
    v = guard.check_model_file(path)
    assert v.action is Action.ALLOW and not v.findings
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert v.facts["sha256"] == hashlib.sha256(data).hexdigest()
    assert v.facts["autov2"] == hashlib.sha256(data).hexdigest()[:10]
    assert v.facts["tensor_sha256"] == hashlib.sha256(data[8 + n:]).hexdigest()
    assert v.facts["autov1"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    if v.facts.get("blake3"):
        import blake3
        assert v.facts["blake3"] == blake3.blake3(data).hexdigest()


def test_autov1_on_a_file_over_one_mebibyte(guard, tmp_path):
    path = mf.write(tmp_path / "big.safetensors", {"lora_unet_x.lora_down.weight": torch.randn(4, 200_000)})
    data = path.read_bytes()
    v = guard.check_model_file(path)
    assert v.facts["autov1"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


@pytest.mark.parametrize("in_memory", [True, False], ids=["read-ahead into memory", "header first, ring buffers"])
@pytest.mark.parametrize("fmt", ["kohya-lora", "checkpoint"])
def test_hashes_agree_with_hashlib_on_both_read_paths(tmp_path, monkeypatch, in_memory, fmt):
    # Tiny blocks: many hand-overs, so the ring's buffers are reused while both threads hash.
    from guard.extract import hashes, model_file

    monkeypatch.setattr(hashes, "BLOCK", 4096)
    monkeypatch.setattr(hashes, "FIRST_BLOCK", 512)
    if not in_memory:
        monkeypatch.setattr(model_file, "_KEEP_SCRATCH", 0)
    tensors = mf.kohya_tensors(mf.lora_weights(3)) if fmt == "kohya-lora" else \
        {"model.diffusion_model.input_blocks.0.0.weight": torch.randn(64, 300)}
    path = mf.write(tmp_path / "m.safetensors", tensors)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    report = inspect_model(path)
    assert report.format == fmt and not report.problems
    assert report.hashes.sha256 == hashlib.sha256(data).hexdigest()
    assert report.hashes.tensor_sha256 == hashlib.sha256(data[8 + n:]).hexdigest()
    assert report.hashes.size == len(data)
    assert (report.fingerprint is not None) == (fmt == "kohya-lora")
    if report.fingerprint is not None:
        monkeypatch.undo()
        assert report.fingerprint.similarity(inspect_model(path).fingerprint) == pytest.approx(1.0)


@pytest.mark.parametrize("length", [0x280, 0x4B50 + 0x40000 * 8])
def test_a_header_length_that_looks_like_a_pickle_or_zip_is_still_safetensors(guard, tmp_path, length):
    # 0x280 is written b"\x80\x02..." (pickle protocol 2's opening); 0x..4B50 starts with "PK".
    tensors = {"lora_unet_a.lora_down.weight": torch.ones(2, 4), "lora_unet_a.lora_up.weight": torch.ones(4, 2)}
    base = mf.write(tmp_path / "base.safetensors", tensors).read_bytes()
    n = int.from_bytes(base[:8], "little")
    # The padding is a modelspec thumbnail (a data URI), the usual large metadata value.
    meta_pad = length - n - len(', "__metadata__": {"modelspec.thumbnail": "data:image/png;base64,"}')
    raw = json.loads(base[8:8 + n])
    raw["__metadata__"] = {"modelspec.thumbnail": "data:image/png;base64," + "x" * meta_pad}
    header = json.dumps(raw, separators=(",", ":")).encode()
    header += b" " * (length - len(header))
    assert len(header) == length
    path = tmp_path / "odd_length.safetensors"
    path.write_bytes(length.to_bytes(8, "little") + header + base[8 + n:])
    assert path.read_bytes()[:2] in (b"\x80\x02", b"PK")
    v = guard.check_model_file(path)
    assert v.facts["container"] == "safetensors" and v.facts["format"] == "kohya-lora", v.findings
    assert v.action is Action.ALLOW


def test_a_file_that_shrinks_while_being_read_is_blocked(guard, lora, monkeypatch):
    # stat() said more bytes than the reads then find: the file changed under the scan.
    from guard.extract import model_file

    real = model_file.open_regular
    monkeypatch.setattr(model_file, "open_regular", lambda path: (lambda fh, size: (fh, size + 4096))(*real(path)))
    v = guard.check_model_file(lora)
    reasons = [f.evidence.get("reason", "") for f in v.findings if f.signal is Signal.FORMAT]
    assert v.action is Action.BLOCK and any("changed while being read" in r for r in reasons), reasons
    assert "fingerprint_layers" not in v.facts


@pytest.mark.parametrize("fmt", ["lycoris-loha", "lycoris-lokr", "lycoris-full", "dora", "textual-inversion",
                                 "checkpoint"])
def test_formats_are_identified(guard, tmp_path, fmt):
    files = mf.other_formats(tmp_path)
    assert guard.check_model_file(files[fmt]).facts["format"] == fmt


def test_other_format_facts(guard, tmp_path):
    files = mf.other_formats(tmp_path)
    assert guard.check_model_file(files["flux-lora"]).facts["base_model"] == "flux"
    assert guard.check_model_file(files["sdxl-checkpoint"]).facts["base_model"] == "sdxl"
    assert guard.check_model_file(files["checkpoint"]).facts["base_model"] == "sd1"
    peft = mf.write(tmp_path / "peft.safetensors", mf.peft_tensors(mf.lora_weights(3)))
    assert guard.check_model_file(peft).facts["format"] == "peft-lora"
    locon = mf.write(tmp_path / "locon.safetensors", mf.kohya_tensors(mf.lora_weights(3, conv=True)))
    assert guard.check_model_file(locon).facts["format"] == "kohya-locon"


def test_modelspec_and_trigger_words_are_screened(guard, tmp_path):
    path = mf.write(tmp_path / "m.safetensors", mf.kohya_tensors(mf.lora_weights(4)),
                    {"modelspec.title": "Hero pack", "modelspec.trigger_phrase": "aoteman, hero"})
    v = guard.check_model_file(path)
    assert v.action is Action.BLOCK
    assert v.findings[0].evidence["key"] == "modelspec.trigger_phrase" and v.findings[0].evidence["via"] == "pinyin"
    clean = mf.write(tmp_path / "c.safetensors", mf.kohya_tensors(mf.lora_weights(4)))
    v = guard.check_model_file(clean, trigger_words=["pikachu"])
    assert v.action is Action.BLOCK and v.findings[0].evidence["key"] == "trigger_words"


def test_authorized_uploader_is_allowed(guard, lora):
    v = guard.check_model_file(lora, account="tsuburaya-official")
    assert v.action is Action.ALLOW and all(f.evidence.get("authorized_account") for f in v.findings)


def test_tampered_sshs_model_hash(guard, tmp_path):
    meta = mf.kohya_metadata({"1girl": 3}, folder="1_x", sshs_model_hash="0" * 64)
    v = guard.check_model_file(mf.write(tmp_path / "t.safetensors", mf.kohya_tensors(mf.lora_weights(5)), meta))
    f = next(f for f in v.findings if f.subject == "sshs_model_hash")
    assert f.action is Action.FLAG and f.evidence["embedded"] == "0" * 64


def test_metadata_only_reads_the_header(guard, lora):
    v = guard.check_model_file(lora, metadata_only=True)
    assert v.action is Action.BLOCK and "sha256" not in v.facts


def test_canonical_names_agree_across_families():
    for kohya, peft, *_ in mf.LAYERS + [mf.CONV]:
        assert canonical_layer(kohya) == canonical_layer(peft)
    assert canonical_layer("base_model.model.down_blocks.0.attentions.0.proj_in") == \
        canonical_layer("lora_unet_down_blocks_0_attentions_0_proj_in")
    for kohya, peft in mf.SDXL_LAYERS:
        assert canonical_layer(kohya) == canonical_layer(peft), kohya
    # Names that only look like the LDM layout are left alone.
    assert canonical_layer("lora_unet_input_blocks_4_7_proj_in") == "unet_input_blocks_4_7_proj_in"


def test_flux_lora_matches_across_kohya_comfyui_and_diffusers_naming(tmp_path):
    w = mf.flux_weights(3)
    kohya = mf.write(tmp_path / "kohya.safetensors", mf.kohya_tensors(w, dtype=torch.bfloat16))
    comfy = mf.write(tmp_path / "comfy.safetensors", mf.flux_as_comfyui(w))  # PEFT keys, original layout
    diffusers = mf.write(tmp_path / "diffusers.safetensors", mf.as_diffusers(w, mf.FLUX_LAYERS))
    other = mf.write(tmp_path / "other.safetensors", mf.as_diffusers(mf.flux_weights(4), mf.FLUX_LAYERS))
    fps = {name: inspect_model(path) for name, path in
           {"kohya": kohya, "comfy": comfy, "diffusers": diffusers, "other": other}.items()}
    assert all(r.base_model == "flux" for r in fps.values())
    parts = sum(len(p) for p in mf.FLUX_LAYERS.values())
    assert {len(r.fingerprint.layers) for r in fps.values()} == {parts}
    base = fps["kohya"].fingerprint
    assert base.similarity(fps["comfy"].fingerprint) == pytest.approx(1.0, abs=1e-2)
    assert base.similarity(fps["diffusers"].fingerprint) == pytest.approx(1.0, abs=1e-2)
    assert base.similarity(fps["other"].fingerprint) < 0.5


def test_sd3_lora_matches_across_kohya_comfyui_and_diffusers_naming(tmp_path):
    w = mf.fused_weights(mf.SD3_LAYERS, 6)
    kohya = mf.write(tmp_path / "kohya.safetensors", mf.kohya_tensors(w, dtype=torch.bfloat16))
    comfy = mf.write(tmp_path / "comfy.safetensors", {  # the original module paths, PEFT parts
        f"diffusion_model.{name[len('lora_unet_'):].replace('_x_block_', '.x_block.').replace('_context_block_', '.context_block.')}"
        f".lora_{'B' if part == 'up' else 'A'}.weight": t
        for name, (up, down) in w.items() for part, t in (("up", up), ("down", down))})
    diffusers = mf.write(tmp_path / "diffusers.safetensors", mf.as_diffusers(w, mf.SD3_LAYERS))
    other = mf.write(tmp_path / "other.safetensors", mf.as_diffusers(mf.fused_weights(mf.SD3_LAYERS, 7), mf.SD3_LAYERS))
    fps = {name: inspect_model(path) for name, path in
           {"kohya": kohya, "comfy": comfy, "diffusers": diffusers, "other": other}.items()}
    assert fps["kohya"].base_model == fps["comfy"].base_model == "sd3"  # joint_blocks (diffusers: by width)
    assert {len(r.fingerprint.layers) for r in fps.values()} == {sum(len(p) for p in mf.SD3_LAYERS.values())}
    base = fps["kohya"].fingerprint
    assert base.similarity(fps["comfy"].fingerprint) == pytest.approx(1.0, abs=1e-2)
    assert base.similarity(fps["diffusers"].fingerprint) == pytest.approx(1.0, abs=1e-2)
    assert base.similarity(fps["other"].fingerprint) < 0.5


@pytest.mark.parametrize("width, family", [(768, "sd1"), (1024, "sd2"), (2048, "sdxl")])
def test_base_model_from_the_cross_attention_width_in_either_naming(tmp_path, width, family):
    # LDM-style names (lora_unet_input_blocks_…) are used for SD1.x files too, not only SDXL.
    layer = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    path = mf.write(tmp_path / "m.safetensors", {f"{layer}.lora_down.weight": torch.ones(4, width),
                                                  f"{layer}.lora_up.weight": torch.ones(320, 4)})
    assert inspect_model(path).base_model == family


def test_diffusers_pre_peft_lora_matches_its_kohya_twin(tmp_path):
    w = mf.lora_weights(9, conv=True)
    kohya = inspect_model(mf.write(tmp_path / "kohya.safetensors", mf.kohya_tensors(w)))
    legacy = inspect_model(mf.write(tmp_path / "pytorch_lora_weights.safetensors", mf.legacy_diffusers_tensors(w)))
    assert (kohya.format, legacy.format) == ("kohya-locon", "diffusers-lora")
    assert legacy.base_model == kohya.base_model == "sd1"
    assert len(legacy.fingerprint.layers) == len(w)
    assert kohya.fingerprint.similarity(legacy.fingerprint) == pytest.approx(1.0, abs=1e-3)


def test_locon_with_a_tucker_core_matches_the_same_update_without_one(tmp_path):
    g = torch.Generator().manual_seed(11)
    name, r = mf.CONV[0], 4
    up, mid, down = (torch.randn(32, r, 1, 1, generator=g), torch.randn(r, r, 3, 3, generator=g),
                     torch.randn(r, 32, 1, 1, generator=g))
    tucker = {f"{name}.lora_up.weight": up, f"{name}.lora_mid.weight": mid, f"{name}.lora_down.weight": down,
              f"{name}.alpha": torch.tensor(2.0)}
    # The same ΔW written as plain LoCon: the core folded into a 3x3 down convolution.
    folded = {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": torch.einsum("abhw,bi->aihw", mid, down[:, :, 0, 0]).contiguous(),
              f"{name}.alpha": torch.tensor(2.0)}
    delta = (up.flatten(1) @ folded[f"{name}.lora_down.weight"].flatten(1)).reshape(32, 32, 3, 3)
    full = {f"{name}.diff": delta}
    a, b, c = (inspect_model(mf.write(tmp_path / f"{n}.safetensors", t)).fingerprint
               for n, t in (("tucker", tucker), ("folded", folded), ("full", full)))
    assert len(a.layers) == 1
    assert a.similarity(b) == pytest.approx(1.0, abs=1e-4)
    assert a.similarity(c) == pytest.approx(1.0, abs=1e-4)
    # Without the core (what was read before), the update is another one.
    plain = {k: v for k, v in tucker.items() if "lora_mid" not in k}
    plain[f"{name}.lora_down.weight"] = down
    assert a.similarity(inspect_model(mf.write(tmp_path / "plain.safetensors", plain)).fingerprint) < 0.5


@pytest.mark.parametrize("width, family", [(1536, "sd3"), (2432, "sd3"), (3072, "flux")])
def test_base_model_of_a_diffusers_transformer_lora_from_its_hidden_width(tmp_path, width, family):
    layer = "transformer.transformer_blocks.0.attn.to_q"  # the same name in SD3 and Flux LoRAs
    path = mf.write(tmp_path / "m.safetensors", {f"{layer}.lora_A.weight": torch.ones(4, width),
                                                  f"{layer}.lora_B.weight": torch.ones(width, 4)})
    assert inspect_model(path).base_model == family


def test_sdxl_lora_in_kohya_naming_matches_its_diffusers_conversion(tmp_path):
    g = torch.Generator().manual_seed(5)
    weights = {names: (torch.randn(40, 4, generator=g), torch.randn(4, 24, generator=g)) for names in mf.SDXL_LAYERS}
    kohya = {f"{k}.{part}.weight": t.half() for (k, _), (up, down) in weights.items()
             for part, t in (("lora_up", up), ("lora_down", down))}
    peft = {f"{p}.{part}.weight": t for (_, p), (up, down) in weights.items()
            for part, t in (("lora_B", up), ("lora_A", down))}
    a = inspect_model(mf.write(tmp_path / "kohya_sdxl.safetensors", kohya))
    b = inspect_model(mf.write(tmp_path / "diffusers_sdxl.safetensors", peft))
    assert (a.format, b.format) == ("kohya-lora", "peft-lora") and a.base_model == b.base_model == "sdxl"
    assert len(a.fingerprint.layers) == len(mf.SDXL_LAYERS)
    assert a.fingerprint.similarity(b.fingerprint) == pytest.approx(1.0, abs=1e-3)


def _fp(path):
    return inspect_model(path).fingerprint


def test_fingerprint_survives_cosmetic_changes_and_tells_loras_apart(tmp_path):
    w = mf.lora_weights(7)
    base = _fp(mf.write(tmp_path / "a.safetensors", mf.kohya_tensors(w), mf.kohya_metadata()))
    same = {
        "stripped+bf16": mf.write(tmp_path / "b.safetensors", mf.kohya_tensors(w, dtype=torch.bfloat16)),
        "peft fp32": mf.write(tmp_path / "c.safetensors", mf.peft_tensors(w)),
        "diffusers pre-PEFT": mf.write(tmp_path / "g.safetensors", mf.legacy_diffusers_tensors(w)),
        "alpha x4": mf.write(tmp_path / "d.safetensors", mf.kohya_tensors(
            {k: (u * 2, d * 2) for k, (u, d) in w.items()}, alpha=0.5)),
        "noise 1%": mf.write(tmp_path / "e.safetensors", mf.kohya_tensors(
            {k: (u + 0.01 * u.std() * torch.randn_like(u), d + 0.01 * d.std() * torch.randn_like(d))
             for k, (u, d) in w.items()})),
        "10% layers dropped": mf.write(tmp_path / "f.safetensors", mf.kohya_tensors(dict(list(w.items())[1:]))),
    }
    for label, path in same.items():
        assert base.similarity(_fp(path)) >= 0.85, label
    others = [_fp(mf.write(tmp_path / f"o{i}.safetensors", mf.kohya_tensors(mf.lora_weights(100 + i))))
              for i in range(20)]
    assert max(base.similarity(o) for o in others) < 0.3


def test_fingerprints_keep_their_scheme_and_never_compare_across_schemes(lora):
    from guard.extract.lora import SCHEME, Fingerprint

    fp = _fp(lora)
    again = Fingerprint.from_bytes(fp.to_bytes())
    assert again.scheme == SCHEME and fp.similarity(again) == pytest.approx(1.0, abs=1e-3)
    # Bytes written before schemes were named (no "scheme" in the head) came from another recipe.
    old = Fingerprint.from_bytes(mf.without_scheme(fp.to_bytes()))
    assert old.scheme != SCHEME and fp.similarity(old) == 0.0


def test_nan_weights_are_a_format_finding(guard, tmp_path):
    w = mf.lora_weights(8)
    first = next(iter(w))
    w[first] = (torch.full_like(w[first][0], float("nan")), w[first][1])
    v = guard.check_model_file(mf.write(tmp_path / "nan.safetensors", mf.kohya_tensors(w)))
    assert v.action is Action.BLOCK and v.findings[0].signal is Signal.FORMAT
    assert "NaN" in v.findings[0].evidence["reason"]


def test_takedown_stays_down_after_stripping_and_casting(state_guard, lora, tmp_path):
    [entry] = state_guard.take_down(lora, "DMCA-1", character="ultraman", reason="trained on Ultraman")
    assert entry.sha256 and entry.fingerprint and len(entry.fingerprint.layers) == len(mf.LAYERS)
    exact = state_guard.check_model_file(lora)
    assert any(f.signal is Signal.FILE_HASH and f.evidence["notice"] == "DMCA-1" for f in exact.findings)
    edited = mf.write(tmp_path / "renamed.safetensors", mf.kohya_tensors(mf.lora_weights(1)), {"ss_output_name": "x"})
    assert any(f.signal is Signal.TENSOR_HASH for f in state_guard.check_model_file(edited).findings)
    reup = mf.write(tmp_path / "reupload.safetensors", mf.peft_tensors(mf.lora_weights(1), dtype=torch.bfloat16))
    v = state_guard.check_model_file(reup, account="someone")
    f = next(f for f in v.findings if f.signal is Signal.FINGERPRINT)
    assert v.action is Action.BLOCK and f.subject == "takedown:DMCA-1" and f.score > 0.95
    other = mf.write(tmp_path / "other.safetensors", mf.kohya_tensors(mf.lora_weights(2)))
    assert state_guard.check_model_file(other).action is Action.ALLOW
    assert state_guard.takedowns.remove("DMCA-1") == 1
    assert state_guard.check_model_file(reup).action is Action.ALLOW


def test_scan_workers_share_the_state_folder_and_keep_order(state_guard, lora, tmp_path):
    # Worker processes forked from this guard: each opens its own state connections, finds the
    # takedown, and appends to one audit chain that still verifies.
    from guard.adapters.scan import scan_files

    state_guard.take_down(lora, "DMCA-2", character="ultraman")
    files = []
    for i in range(8):
        files.append(str(mf.write(tmp_path / f"clean_{i}.safetensors", mf.kohya_tensors(mf.lora_weights(10 + i)))))
        files.append(str(mf.write(tmp_path / f"reup_{i}.safetensors", mf.peft_tensors(mf.lora_weights(1)))))
    before = sum(1 for _ in state_guard.audit.rows())
    verdicts = list(scan_files(files, {}, workers=2, guard=state_guard))
    assert [v.subject for v in verdicts] == files
    assert [v.action for v in verdicts] == [Action.ALLOW, Action.BLOCK] * 8
    assert all(any(f.subject == "takedown:DMCA-2" for f in v.findings) for v in verdicts[1::2])
    assert sum(1 for _ in state_guard.audit.rows()) == before + len(files)
    assert state_guard.audit.verify().ok


def test_default_worker_count_follows_the_kind_of_scan(monkeypatch):
    from guard.adapters import scan

    monkeypatch.setattr(scan.os, "cpu_count", lambda: 8)
    assert scan.default_workers(100, metadata_only=True) == 1  # a pool would cost more than it saves
    assert scan.default_workers(5000, metadata_only=True) == 8
    assert scan.default_workers(5000, metadata_only=False) == 4  # each file keeps two cores busy
    monkeypatch.setattr(scan.os, "cpu_count", lambda: 1)
    assert scan.default_workers(5000, metadata_only=False) == 1


def test_takedown_list_warns_about_fingerprints_of_an_older_recipe(bank_file, lora, tmp_path, capsys):
    import sqlite3

    state = tmp_path / "state"
    assert main(["takedown", "add", str(lora), "--notice", "OLD-1", "--bank", str(bank_file),
                 "--state", str(state)]) == 0
    with sqlite3.connect(state / "takedowns.sqlite") as db:  # as a version before recipes were named wrote it
        blob = db.execute("SELECT fingerprint FROM takedowns").fetchone()[0]
        db.execute("UPDATE takedowns SET fingerprint = ?", (mf.without_scheme(blob),))
    capsys.readouterr()
    assert main(["takedown", "list", "--state", str(state)]) == 0
    err = capsys.readouterr().err
    assert "1 takedown(s) hold fingerprints of an older recipe" in err and "window128-k8" in err


def test_scan_cli(bank_file, lora, tmp_path, capsys):
    catalog = tmp_path / "catalog"
    (catalog / "sub").mkdir(parents=True)
    mf.write(catalog / "sub" / "clean.safetensors", mf.kohya_tensors(mf.lora_weights(2)))
    (catalog / "ultra.safetensors").write_bytes(lora.read_bytes())
    (catalog / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    (catalog / "notes.txt").write_text("not a model")
    code = main(["scan", str(catalog), "--bank", str(bank_file), "--json"])
    verdicts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 4 and len(verdicts) == 3
    by_name = {v["subject"].rsplit("/", 1)[-1]: v for v in verdicts}
    assert by_name["clean.safetensors"]["action"] == "allow"
    assert by_name["broken.safetensors"]["findings"][0]["signal"] == "format"
    code = main(["scan", str(catalog), "--bank", str(bank_file), "--metadata-only"])
    text = capsys.readouterr().out
    assert code == 4 and "by character / rule: " in text and "ultraman 1" in text


def test_takedown_cli(bank_file, lora, tmp_path, capsys):
    state = str(tmp_path / "state")
    assert main(["takedown", "add", str(lora), "--notice", "N-7", "--character", "ultraman",
                 "--bank", str(bank_file), "--state", state]) == 0
    assert main(["takedown", "list", "--state", state, "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert listed[0]["notice"] == "N-7" and listed[0]["fingerprint_layers"] == len(mf.LAYERS)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(lora.read_bytes())
    assert main(["scan", str(copy), "--bank", str(bank_file), "--state", state, "--json"]) == 4
    assert "takedown:N-7" in capsys.readouterr().out
    assert main(["takedown", "add", str(lora), "--notice", "N-8", "--character", "nobody",
                 "--bank", str(bank_file), "--state", state]) == 2
    assert main(["takedown", "remove", "--notice", "N-7", "--state", state]) == 0
    assert main(["takedown", "list", "--state"]) == 2
