"""Keep-down recall of LoRA fingerprints against the re-upload tools of this field.

Tiny SD1/SDXL/Flux-shaped LoRAs (real layer names and block structure, reduced widths;
`guard.testing.loras`) are taken down; each is re-uploaded through every transformation
below, written to a real file and checked through `inspect_model` and the takedown
index, as `guard check model` does. Third-party tools run themselves where they install
from the package index (diffusers' kohya converter and ``save_lora_weights``); sd-scripts'
resize/merge/svd-merge and ComfyUI's LoraSave are re-implemented from their documented
recipes; ComfyUI's layer names come from ComfyUI's own key maps (``../shared/vendor``).
Then >= 1,000 unrelated LoRAs of the same architectures and ranks (a tenth of them
trained, in effect, from the same initialisation as a takedown: shared down matrices) are
compared with every takedown of their architecture: none may reach the flag threshold.

    python benchmarks/bench_fingerprint.py [--takedowns 23] [--unrelated 1000]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from guard.extract.model_file import inspect_model  # noqa: E402
from guard.policy import Policy  # noqa: E402
from guard.testing import loras as L  # noqa: E402
from guard.verdict import Signal, Surface  # noqa: E402

RANKS = (8, 16, 4, 32)


def subset(tensors: dict, share: float, seed: int) -> dict:
    """The file with only ``share`` of its layers (whole layers, as a re-uploader cuts them)."""
    prefixes = sorted({k.rsplit(".lora_", 1)[0].rsplit(".alpha", 1)[0] for k in tensors})
    kept = set(random.Random(seed).sample(prefixes, round(len(prefixes) * share)))
    return {k: v for k, v in tensors.items() if k.rsplit(".lora_", 1)[0].rsplit(".alpha", 1)[0] in kept}


def junk(tensors: dict, count: int, seed: int) -> dict:
    """``count`` extra layers under module names no model has (loaders skip them), as strong
    as the real ones."""
    g = torch.Generator().manual_seed(seed)
    out = dict(tensors)
    for i in range(count):
        out[f"lora_unet_decoy_blocks_{i}_proj.lora_up.weight"] = (torch.randn(128, 8, generator=g) * 0.05).half()
        out[f"lora_unet_decoy_blocks_{i}_proj.lora_down.weight"] = (torch.randn(8, 128, generator=g) * 0.1).half()
        out[f"lora_unet_decoy_blocks_{i}_proj.alpha"] = torch.tensor(4.0).half()
    return out


def near_zero(lora: dict, arch: L.Arch, count: int, seed: int) -> dict:
    """``count`` near-empty layers on real modules the LoRA leaves alone."""
    g = torch.Generator().manual_seed(seed)
    out = dict(lora)
    for name, o, i in arch.spare[:count]:
        out[name] = L.Layer(torch.randn(o, 4, generator=g) * 1e-4, torch.randn(4, i, generator=g) * 1e-4, 2.0)
    return out


def diffusers_roundtrip(path: Path, arch: L.Arch, tmp: Path) -> dict:
    """diffusers' own converter (``lora_state_dict`` of the kohya file) and ``save_lora_weights``."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pipe = {"sd1": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}[arch.name]
    from types import SimpleNamespace

    # load_lora_weights passes the UNet's config, which maps SDXL's original block numbers
    unet_config = SimpleNamespace(layers_per_block=2)
    state = pipe.lora_state_dict(str(path), unet_config=unet_config)
    state = state[0] if isinstance(state, tuple) else state
    parts = defaultdict(dict)
    for key, value in state.items():
        head, rest = key.split(".", 1)
        parts[head][rest] = value
    out = tmp / "diffusers"
    if arch.name == "sdxl":
        pipe.save_lora_weights(str(out), unet_lora_layers=parts["unet"], text_encoder_lora_layers=parts["text_encoder"],
                               text_encoder_2_lora_layers=parts["text_encoder_2"])
    else:
        pipe.save_lora_weights(str(out), unet_lora_layers=parts["unet"], text_encoder_lora_layers=parts["text_encoder"])
    return load_file(str(out / "pytorch_lora_weights.safetensors"))


def variants(w: dict, arch: L.Arch, rank: int, seed: int, original: Path, tmp: Path):
    """(row label, tensors, metadata) for every re-upload of one takedown."""
    k = lambda lora, **kw: L.write(lora, arch, "kohya", **kw)  # noqa: E731
    spectrum = "decaying" if seed % 2 else "flat"  # partners as strong as the takedown
    other = L.make_lora(arch, seed + 7_000, rank, spectrum)
    wider = {n: L.Layer(v.up / 2 ** 0.5, v.down, v.alpha)  # twice the rank, the same strength
             for n, v in L.make_lora(arch, seed + 8_000, 2 * rank, spectrum).items()}
    pad = {n: L.Layer(torch.cat([v.up, torch.zeros(v.up.shape[0], rank)], 1),
                      torch.cat([v.down, torch.zeros(rank, v.down.shape[1])]), 2 * v.alpha) for n, v in w.items()}
    g = torch.Generator().manual_seed(seed)
    noisy = {n: L.Layer(v.up + 0.01 * v.up.std() * torch.randn(v.up.shape, generator=g),
                        v.down + 0.01 * v.down.std() * torch.randn(v.down.shape, generator=g), v.alpha)
             for n, v in w.items()}
    no_te = {n: v for n, v in w.items() if not n.startswith("text_encoder")}
    meta = {"ss_output_name": "totally_original", "ss_tag_frequency": "{}"}
    yield "metadata rewritten", k(w), meta
    yield "fp16 -> fp32 / bf16", k(w, dtype=torch.float32), None
    yield "fp16 -> fp32 / bf16", k(w, dtype=torch.bfloat16), None
    yield "rank 2x (zero-padded), alpha 2x", k(pad), None
    yield "up x4, down x1/4; alpha x8", k({n: L.Layer(v.up * 4, v.down / 4, v.alpha) for n, v in w.items()}), None
    yield "up x4, down x1/4; alpha x8", k({n: L.Layer(v.up, v.down, v.alpha * 8) for n, v in w.items()}), None
    yield "Gaussian noise 1% of std", k(noisy), None
    yield "PEFT names (diffusers layout)", L.write(w, arch, "peft"), None
    if arch.name != "flux":  # diffusers' kohya-Flux converter assumes Flux's real widths (3072)
        yield "diffusers converter + save_lora_weights", diffusers_roundtrip(original, arch, tmp), None
    yield "ComfyUI naming", L.write(w, arch, "comfyui"), None
    if arch.te_slots:
        yield "ComfyUI naming + kohya lora_te_ keys", L.write(w, arch, "comfyui+kohya-te"), None
        yield "diffusers' old names (processors, patched CLIP)", L.write(w, arch, "diffusers-old"), None
        yield "text-encoder layers removed", k(no_te), None
    yield "ComfyUI LoraSave (SVD rank 8, clamp, fp16)", L.lora_save(w, arch, 8), None
    yield "lycoris_ prefix (SimpleTuner)", L.write(w, arch, "lycoris"), None
    yield "129 extra layers, names no model has", junk(k(w), 129, seed), None
    yield "4 near-zero layers on untouched modules", k(near_zero(w, arch, 4, seed)), None
    yield "50% of the layers kept", subset(k(w), 0.5, seed), None
    yield "75% of the layers kept", subset(k(w), 0.75, seed), None
    yield "sd-scripts merge_lora 0.5/0.5 (factor sums)", k(L.merge(w, other, 0.5, 0.5)), None
    yield "sd-scripts merge_lora --concat 0.5/0.5", k(L.merge(w, other, 0.5, 0.5, concat=True)), None
    # merge_lora scales both factors by the ratio: ratios 0.45/0.89 give the ΔWs weights 0.2/0.8
    yield "sd-scripts merge_lora --concat, ΔW 0.2/0.8", k(L.merge(w, other, 0.2 ** 0.5, 0.8 ** 0.5, concat=True)), None
    yield "sd-scripts merge_lora --concat, ΔW 0.1/0.9", k(L.merge(w, other, 0.1 ** 0.5, 0.9 ** 0.5, concat=True)), None
    yield "svd_merge_lora, wider LoRA, 0.2/0.8, summed rank", k(L.svd_merge(w, wider, 0.2, 0.8, 3 * rank)), None
    yield "svd_merge_lora, wider LoRA, 0.2/0.8, wider's rank", k(L.svd_merge(w, wider, 0.2, 0.8, 2 * rank)), None
    yield "resize_lora to rank 4", k(L.resize(w, 4)), None
    yield "resize_lora to rank 2", k(L.resize(w, 2)), None
    yield "all at once: ComfyUI names, 75%, noise, bf16", subset(L.write(noisy, arch, "comfyui", dtype=torch.bfloat16),
                                                                  0.75, seed), meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--takedowns", type=int, default=23)
    parser.add_argument("--unrelated", type=int, default=1000)
    parser.add_argument("--scores", help="also write every score (per recipe, and the unrelated) to this JSON file, "
                                         "for calibrating the policy's thresholds")
    args = parser.parse_args()
    policy = Policy.load()
    layers = policy.layers(Signal.FINGERPRINT, Surface.MODEL_FILE)
    block, flag, substantial = layers["block"], layers["flag"], policy.model.substantial_share
    archs = [L.sd1(), L.sdxl(), L.flux()]
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)

        def fp(tensors, meta=None, name="t"):
            path = tmp / f"{name}.safetensors"
            save_file(tensors, str(path), metadata=meta)
            return inspect_model(path).fingerprint

        rows: dict[str, list[float]] = defaultdict(list)
        taken: list[tuple[L.Arch, object, int]] = []
        for t in range(args.takedowns):
            arch, rank = archs[t % 3], RANKS[t % len(RANKS)]
            spectrum = "decaying" if t % 2 else "flat"
            w = L.make_lora(arch, t, rank, spectrum)
            original = tmp / f"takedown{t}.safetensors"
            save_file(L.write(w, arch, "kohya"), str(original), metadata={"ss_output_name": f"takedown{t}"})
            entry = inspect_model(original).fingerprint
            taken.append((arch, entry, t))
            for label, tensors, meta in variants(w, arch, rank, t, original, tmp):
                rows[label].append(fp(tensors, meta).contains(entry, substantial).score)
        unrelated = []
        for u in range(args.unrelated):
            arch, rank = archs[u % 3], RANKS[(u // 3) % len(RANKS)]
            same_init = u % 10 == 9  # shares the down matrices of a takedown of its architecture
            down_seed = next(t for a, _, t in taken if a is arch) if same_init else None
            lora = L.make_lora(arch, 100_000 + u, RANKS[0] if same_init else rank,
                               "decaying" if u % 2 else "flat", down_seed=down_seed)
            unrelated.append((arch, fp(L.write(lora, arch, "kohya"), name="u")))
        matches = [f.contains(entry, substantial) for arch, f in unrelated for a, entry, _ in taken if a is arch]
    cross = [m.score for m in matches]
    margin = max(matches, key=lambda m: m.agreement / m.chance)

    total = sum(len(v) for v in rows.values())
    print(f"{args.takedowns} takedowns (SD1/SDXL/Flux-shaped, ranks {'/'.join(map(str, RANKS))}, flat and decaying "
          f"spectra), {total} re-uploads; policy: block >= {block}, flag >= {flag}, substantial share {substantial}")
    print(f"  {'re-upload made by':52s} blocked flagged allowed  min score")
    blocked_all = 0
    for label, scores in rows.items():
        b = sum(s >= block for s in scores)
        f = sum(flag <= s < block for s in scores)
        blocked_all += b
        print(f"  {label:52s} {b:4d}/{len(scores):<3d} {f:5d}  {len(scores) - b - f:6d}   {min(scores):.3f}")
    false = sum(s >= flag for s in cross)
    print(f"blocked: {blocked_all}/{total} ({blocked_all / total:.1%})")
    print(f"unrelated: {len(unrelated)} LoRAs, {len(cross)} comparisons with takedowns of their architecture; "
          f"{false} at or above the flag threshold; highest score {max(cross):.3f}; highest agreement "
          f"{margin.agreement:.3f} ({margin.agreement / margin.chance * 4:.1f} standard errors of chance)")
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.scores:
        import json

        Path(args.scores).write_text(json.dumps({"recipes": rows, "unrelated": cross}), encoding="utf-8")


if __name__ == "__main__":
    main()
