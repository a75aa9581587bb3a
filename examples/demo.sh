#!/usr/bin/env bash
# The offline demo (`make demo`): build a bank of protected characters from synthetic
# stand-in drawings, then check uploads and prompts against it, as an operator would.
# It uses the tiny test encoder: its similarities mean nothing on real images.
set -u
cd "$(dirname "$0")/.."
rm -rf out
mkdir -p out
export GUARD_BANK=out/demo-bank.safetensors GUARD_ENCODER=tiny-test GUARD_STATE=out/state

step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "${*:2}"; "${@:2}"; echo "(exit status $?)"; }

step "Build the bank from examples/demo_refs" \
  guard bank build examples/demo_refs -o "$GUARD_BANK"
step "Check uploaded images (exit 4: something is blocked)" \
  guard check image examples/demo_uploads --surface cover_image
step "The rights holder's own account may use its character" \
  guard check image examples/demo_refs/ultraman/pose0.png --surface cover_image --account tsuburaya-official
step "Prompts: a name in another script is still a name" \
  guard check prompt "奥特曼 fighting a kaiju in Tokyo"
step "A character's name in the negative prompt is a mitigation, not an attempt" \
  guard check prompt "a giant robot at sunset" --negative "ultraman, pikachu"
step "JSONL for scripts" \
  guard check prompt "Super Mario in a forest" --json
step "Indirect anchors: no name, but two words that evoke one (flagged for review)" \
  guard check prompt "a plumber in a videogame, pixel art"
step "Scan uploaded model files: training metadata, pickle refusal (nothing is unpickled)" \
  guard scan examples/demo_models
step "Take the LoRA down (file hash, tensor hash and weight fingerprint are kept)" \
  guard takedown add examples/demo_models/hero_style_v2.safetensors --notice DEMO-1 --character ultraman
python - <<'PY'
# A re-upload: metadata stripped, keys renamed to PEFT style, cast to bf16.
from safetensors.torch import load_file, save_file
from guard.extract.lora_keys import canonical_layer
t = load_file("examples/demo_models/hero_style_v2.safetensors")
out = {}
for key, value in t.items():
    layer, part = key.rsplit(".", 2)[0], key.split(".", 1)[1]
    if part == "alpha":
        continue
    name = canonical_layer(layer).replace("unet_", "unet.", 1)
    out[f"{name}.{'lora_A' if 'down' in part else 'lora_B'}.weight"] = value.bfloat16()
save_file(out, "out/reupload.safetensors")
PY
step "The re-upload (stripped, renamed, bf16) stays down" \
  guard scan out/reupload.safetensors
step "Every verdict above was recorded once; the hash chain proves none was edited" \
  guard audit verify
step "The duty-of-care report (JSON here; out/report.html has the charts)" \
  guard audit report --html out/report.html -o out/report.json
python -c "import json; r = json.load(open('out/report.json')); print({k: r[k] for k in ('verdicts', 'by_action', 'by_character', 'takedowns', 'reupload_blocks')})"
exit 0
