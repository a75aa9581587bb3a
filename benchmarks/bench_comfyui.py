"""The ComfyUI adapter's costs, in one run, in-process with ComfyUI's own ``folder_paths``:

- the workflow guard (the on_prompt handler) on a 40-node workflow with 6 model-file inputs
  (a checkpoint, a VAE, four LoRAs), cold (every file hashed and fingerprinted) and with the
  file verdicts cached (goal: <= 5 ms), audit row included; every request carries new prompt
  texts (the rest of the graph repeats, as a platform's templates do);
- the output guard per 512x512 image against ComfyUI's own ``SaveImage`` PNG encode of the
  same image (PIL, compress_level 4, with the workflow as PNG text).

    python benchmarks/bench_comfyui.py [--repeat 50]

The demo bank's tiny encoder is used: the output figure is the guard's own work around an
encoder forward (bench_images.py measures real-encoder costs).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_scan import write_sd15_lora  # noqa: E402
from guard import Guard  # noqa: E402
from guard.adapters.comfyui import outputs, workflow  # noqa: E402
from guard.adapters.comfyui.runtime import Runtime  # noqa: E402
from guard.testing.comfyui import comfyui_source  # noqa: E402


def _time(fn, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def guard_windows(text: str, guard) -> list[str]:
    from guard.checks.text import _windows

    return _windows(text, guard.policy.text.window_words, guard.policy.text.window_stride)


def workflow_graph(loras: list[str]) -> dict:
    """40 nodes: loaders, a LoRA chain, prompts, samplers, decoders, image ops, savers."""
    g = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "base.safetensors"}},
         "2": {"class_type": "VAELoader", "inputs": {"vae_name": "vae.safetensors"}}}
    model, clip = ["1", 0], ["1", 1]
    for i, name in enumerate(loras):
        g[str(10 + i)] = {"class_type": "LoraLoader", "inputs": {"lora_name": name, "model": model, "clip": clip,
                                                               "strength_model": 0.8, "strength_clip": 0.8}}
        model, clip = [str(10 + i), 0], [str(10 + i), 1]
    n = 20
    while len(g) < 40:
        pos, neg, lat, ks, dec, sav = (str(n + k) for k in range(6))
        g[pos] = {"class_type": "CLIPTextEncode", "inputs": {"text": f"a lighthouse on a cliff at dawn, variant {n}, "
                                                                     "volumetric light, highly detailed", "clip": clip}}
        g[neg] = {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, lowres, watermark", "clip": clip}}
        g[lat] = {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}}
        g[ks] = {"class_type": "KSampler", "inputs": {"model": model, "positive": [pos, 0], "negative": [neg, 0],
                                                     "latent_image": [lat, 0], "seed": n, "steps": 20, "cfg": 7.0,
                                                     "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
        g[dec] = {"class_type": "VAEDecode", "inputs": {"samples": [ks, 0], "vae": ["2", 0]}}
        g[sav] = {"class_type": "SaveImage", "inputs": {"images": [dec, 0], "filename_prefix": f"run{n}"}}
        n += 6
    return dict(list(g.items())[:40])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    source = comfyui_source()
    if source is None:
        sys.exit("ComfyUI's source is needed (../shared/vendor or GUARD_COMFYUI_SRC)")
    sys.path.insert(0, str(source))
    import folder_paths

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for folder in ("checkpoints", "vae", "loras"):
            (tmp / folder).mkdir()
            folder_paths.add_model_folder_path(folder, str(tmp / folder), is_default=True)
        loras = [f"style_{i}.safetensors" for i in range(4)]
        for i, name in enumerate(loras):
            write_sd15_lora(tmp / "loras" / name, seed=i, rank=32)
        g = torch.Generator().manual_seed(0)
        save_file({f"model.diffusion_model.block{i}.weight": torch.randn(1024, 1024, generator=g).half()
                   for i in range(100)}, str(tmp / "checkpoints" / "base.safetensors"))
        save_file({f"decoder.block{i}.weight": torch.randn(512, 512, generator=g).half() for i in range(40)},
                  str(tmp / "vae" / "vae.safetensors"))
        sizes = sum(p.stat().st_size for p in tmp.rglob("*.safetensors")) / 2 ** 20
        guard = Guard.open(ROOT / "embeddings" / "demo-bank.safetensors", state=tmp / "state")
        runtime = Runtime(guard, None)
        on_prompt = workflow.handler(runtime, lambda kinds: None)
        graph = workflow_graph(loras)

        def run(r: int, fresh: bool = True) -> float:
            request = json.loads(json.dumps(graph))
            for node in request.values():  # users' prompts are new each time; the rest of a graph repeats
                if fresh and node["class_type"] == "CLIPTextEncode" and "lighthouse" in node["inputs"]["text"]:
                    node["inputs"]["text"] += f", request {r}"
            started = time.perf_counter()
            out = on_prompt({"prompt": request, "extra_data": {"guard_account": "bench"}})
            took = time.perf_counter() - started
            assert out["prompt"].keys() == graph.keys(), "the bench workflow was refused"
            return took

        guard.encoder.encode_texts(["warm-up"])  # loading the encoder is start-up, not a workflow's cost
        cold = run(0)
        if os.environ.get("BENCH_PROFILE"):
            import cProfile

            profile = cProfile.Profile()
            profile.enable()
            for r in range(1000, 1100):
                run(r)
            profile.disable()
            profile.dump_stats(os.environ["BENCH_PROFILE"])
        warm = [run(r) for r in range(1, args.repeat + 1)]
        repeated = [run(0, fresh=False) for _ in range(args.repeat)]
        fresh_texts = [t.text + ", request 1" for t in workflow.read_graph(graph)[0]
                       if "lighthouse" in t.text]
        windows = sum(len(guard_windows(t, guard)) for t in fresh_texts)
        forward = statistics.median(_time(lambda: guard.encoder.encode_texts(
            [w for t in fresh_texts for w in guard_windows(t, guard)]), 20))
        texts, files = workflow.read_graph(graph)

        image = torch.from_numpy(np.asarray(Image.open(ROOT / "examples/demo_uploads/unrelated_2.png")
                                            .convert("RGB").resize((512, 512)), dtype=np.float32) / 255)[None]
        outputs.check_images(runtime, image, "warm-up")

        def save_png() -> None:  # what SaveImage does with one image
            meta = PngInfo()
            meta.add_text("prompt", json.dumps(graph))
            array = np.clip(255.0 * image[0].cpu().numpy(), 0, 255).astype(np.uint8)
            Image.fromarray(array).save(io.BytesIO(), format="PNG", pnginfo=meta, compress_level=4)

        def timed(fn, n=20) -> float:
            times = []
            for _ in range(n):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
            return statistics.median(times)

        check = timed(lambda: outputs.check_images(runtime, image, "SaveImage.images"))
        encode = timed(save_png)

    print(f"CPU, {os.cpu_count()} cores; ComfyUI {source.name}; demo bank (tiny encoder)")
    print(f"workflow guard: 40 nodes, {len(texts)} text inputs, {len(files)} model files ({sizes:.0f} MiB)")
    print(f"  cold (files hashed, fingerprinted) : {cold * 1000:8.1f} ms")
    print(f"  cached file verdicts, same texts  : {statistics.median(repeated) * 1000:8.2f} ms "
          f"(p95 {sorted(repeated)[int(0.95 * len(repeated)) - 1] * 1000:.2f} ms; goal <= 5 ms)")
    print(f"  cached file verdicts, new prompts : {statistics.median(warm) * 1000:8.2f} ms "
          f"(p95 {sorted(warm)[int(0.95 * len(warm)) - 1] * 1000:.2f} ms), of which the encoder forward of "
          f"{len(fresh_texts)} new prompts ({windows} windows) {forward * 1000:.2f} ms")
    print(f"output guard per 512x512 image: {check * 1000:.1f} ms vs SaveImage's PNG encode {encode * 1000:.1f} ms "
          f"(ratio {check / encode:.2f})")


if __name__ == "__main__":
    main()
