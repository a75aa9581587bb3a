"""Synthetic "characters": seeded compositions of coloured shapes.

They stand in for protected characters wherever real images must not be used:
training the tiny test encoder, the demo references and the tests. A character is
a seed; a *pose* of it is a jittered rendering (shifted, rescaled parts, another
background tint), so "same character, other picture" can be tested without any
copyrighted image.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "silver": (190, 190, 200),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "green": (40, 170, 70),
    "black": (20, 20, 20),
    "orange": (245, 140, 30),
    "purple": (140, 60, 170),
    "white": (250, 250, 250),
    "brown": (120, 75, 40),
}
SHAPES = ("circle", "square", "triangle", "ring", "bar", "star")


@dataclass(frozen=True)
class Part:
    shape: str
    colour: str
    x: float
    y: float
    size: float
    angle: float


@dataclass(frozen=True)
class Character:
    seed: int
    background: tuple[int, int, int]
    parts: tuple[Part, ...]

    @property
    def caption(self) -> str:
        names = [f"{p.colour} {p.shape}" for p in self.parts[:3]]
        return "a drawing of a " + ", a ".join(names)


def character(seed: int) -> Character:
    """The character that ``seed`` names (deterministic across platforms)."""
    rng = random.Random(seed)
    colours = list(COLOURS)
    background = tuple(rng.randint(90, 255) for _ in range(3))
    parts = tuple(
        Part(
            shape=rng.choice(SHAPES),
            colour=rng.choice(colours),
            x=rng.uniform(0.25, 0.75),
            y=rng.uniform(0.25, 0.75),
            size=rng.uniform(0.12, 0.32),
            angle=rng.uniform(0, 360),
        )
        for _ in range(rng.randint(3, 5))
    )
    return Character(seed, background, parts)  # type: ignore[arg-type]


def render(char: Character, pose: int = 0, size: int = 128) -> Image.Image:
    """Draw ``char`` in pose ``pose`` (0 is the canonical pose) as an RGB image."""
    rng = random.Random((char.seed * 1_000_003) ^ (pose * 7919))
    jitter = 0.0 if pose == 0 else 1.0
    scale = 1.0 + jitter * rng.uniform(-0.12, 0.10)
    dx, dy = (jitter * rng.uniform(-0.07, 0.07) for _ in range(2))
    bg = tuple(max(0, min(255, c + int(jitter * rng.uniform(-20, 20)))) for c in char.background)

    ss = size * 2  # draw at twice the size and downsample, for antialiasing
    img = Image.new("RGB", (ss, ss), bg)
    draw = ImageDraw.Draw(img)
    for part in char.parts:
        cx = (0.5 + (part.x - 0.5) * scale + dx + jitter * rng.uniform(-0.03, 0.03)) * ss
        cy = (0.5 + (part.y - 0.5) * scale + dy + jitter * rng.uniform(-0.03, 0.03)) * ss
        r = part.size * scale * (1 + jitter * rng.uniform(-0.1, 0.1)) * ss / 2
        angle = part.angle + jitter * rng.uniform(-15, 15)
        _draw_part(draw, part.shape, COLOURS[part.colour], cx, cy, r, angle)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def _polygon(cx: float, cy: float, r: float, n: int, angle: float, inner: float = 1.0):
    points = []
    for i in range(n * (2 if inner != 1.0 else 1)):
        rad = r if (inner == 1.0 or i % 2 == 0) else r * inner
        step = math.pi * 2 / (n * (2 if inner != 1.0 else 1))
        a = math.radians(angle) + i * step
        points.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return points


def _draw_part(draw: ImageDraw.ImageDraw, shape: str, fill, cx, cy, r, angle) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r / 3)))
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, r, 4, angle), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, angle), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r, 5, angle, inner=0.45), fill=fill)
    else:  # bar
        draw.polygon(
            [
                (cx + dx * r + ex * r * 0.25, cy + dy * r + ey * r * 0.25)
                for dx, dy, ex, ey in _bar_corners(angle)
            ],
            fill=fill,
        )


def _bar_corners(angle: float):
    a = math.radians(angle)
    ux, uy = math.cos(a), math.sin(a)
    vx, vy = -uy, ux
    return [(ux, uy, vx, vy), (ux, uy, -vx, -vy), (-ux, -uy, -vx, -vy), (-ux, -uy, vx, vy)]


def clustered_embeddings(n: int, dim: int, per_group: int = 8, seed: int = 0):
    """``[n, dim]`` unit rows shaped roughly like a CLIP bank: a shared direction (CLIP's
    narrow cone), a decaying spectrum, and groups of ``per_group`` rows around a centre
    (one character's exemplars). For matcher tests and benchmarks; no semantics."""
    import torch

    g = torch.Generator().manual_seed(seed)
    spectrum = torch.arange(1, dim + 1).float() ** -0.5
    centres = torch.randn(n // per_group + 1, dim, generator=g) * spectrum
    rows = centres.repeat_interleave(per_group, 0)[:n] + 0.6 * torch.randn(n, dim, generator=g) * spectrum
    rows[:, 0] += 2.0
    return torch.nn.functional.normalize(rows, dim=1)
