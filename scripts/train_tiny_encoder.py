"""Train the tiny test encoder shipped in guard/data/tiny-test.safetensors.

A randomly initialised CLIP maps unrelated images to nearly collinear embeddings, so
"random tiny encoder + threshold" would test nothing. This script trains the tiny
open_clip config for about two minutes on CPU on synthetic characters (guard.testing.synthetic):
two poses/crops of one character are pulled together, other characters pushed apart, and
each image is tied to a caption of its shapes. The result is discriminative on drawings
like the demo's and means nothing on real images.

Demo and test characters use seeds below 100_000; training uses seeds above it.

    python scripts/train_tiny_encoder.py --seconds 420 --batch 128
    python scripts/train_tiny_encoder.py --resume --seconds 720 --batch 128 --lr 1e-3 --seed 1

(the shipped weights were made by exactly these two runs, in this order).
"""

from __future__ import annotations

import argparse
import io
import random
import time

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import open_clip
from guard.encoders.openclip import TINY_CONFIG, TINY_WEIGHTS, _register_tiny
from guard.testing.synthetic import character, render

TRAIN_SEED_BASE = 100_000


def augment(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    frac = rng.uniform(0.78, 1.0)
    cw, ch = int(w * frac), int(h * frac)
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BICUBIC)
    if rng.random() < 0.2:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=rng.randint(50, 90))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def batch(rng: random.Random, n: int, preprocess):
    seeds = [TRAIN_SEED_BASE + rng.randrange(5_000_000) for _ in range(n)]
    views_a, views_b, captions = [], [], []
    for s in seeds:
        char = character(s)
        views_a.append(preprocess(augment(render(char, rng.choice([0, rng.randint(1, 999)]), 96), rng)))
        views_b.append(preprocess(augment(render(char, rng.randint(1, 999), 96), rng)))
        captions.append(char.caption)
    return torch.stack(views_a), torch.stack(views_b), captions


@torch.no_grad()
def evaluate(model, preprocess, n: int = 64) -> tuple[float, float]:
    model.eval()
    chars = [character(1_000_000_000 + i) for i in range(n)]
    a = model.encode_image(torch.stack([preprocess(render(c, 0, 128)) for c in chars]), normalize=True)
    b = model.encode_image(torch.stack([preprocess(render(c, 7, 128)) for c in chars]), normalize=True)
    sim = a @ b.T
    same = sim.diag().mean().item()
    other = (sim.sum() - sim.diag().sum()).item() / (n * n - n)
    model.train()
    return same, other


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the shipped weights")
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    _register_tiny()
    # Random init is the point here: this is the one place that trains from scratch.
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-test", pretrained=None)
    tokenizer = open_clip.get_tokenizer("tiny-test")
    if args.resume:
        from safetensors.torch import load_file
        model.load_state_dict({k: v.float() for k, v in load_file(str(TINY_WEIGHTS)).items()})
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    model.train()
    print(f"config {TINY_CONFIG.name}; before training: same/other cosine = {evaluate(model, preprocess)}")

    start, step = time.time(), 0
    while time.time() - start < args.seconds:
        va, vb, captions = batch(rng, args.batch, preprocess)
        za = model.encode_image(va, normalize=True)
        zb = model.encode_image(vb, normalize=True)
        zt = model.encode_text(tokenizer(captions), normalize=True)
        labels = torch.arange(len(va))
        logits = za @ zb.T / 0.1
        loss_img = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        scale = model.logit_scale.exp().clamp(max=100)
        logits_t = scale * za @ zt.T
        loss_txt = (F.cross_entropy(logits_t, labels) + F.cross_entropy(logits_t.T, labels)) / 2
        loss = loss_img + 0.5 * loss_txt
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - start:.0f}s)")

    same, other = evaluate(model, preprocess)
    print(f"after {step} steps: held-out same-character cosine {same:.3f}, different-character {other:.3f}")
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(TINY_WEIGHTS), metadata={"trained_by": "scripts/train_tiny_encoder.py",
                                                  "steps": str(step), "seed": str(args.seed)})
    print(f"wrote {TINY_WEIGHTS} ({TINY_WEIGHTS.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
