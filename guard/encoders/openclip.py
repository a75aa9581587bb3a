"""open_clip behind the `Encoder` interface.

Weights are resolved *before* open_clip is asked to build a model, from local files and
the local download caches only; the network is used only when the caller allows a
download. open_clip is always called with ``require_pretrained=True``: a production spec
either gets its real weights or the caller gets `EncoderUnavailable`, never random ones.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from guard.errors import ConfigError, DeviceUnavailable, EncoderUnavailable
from guard.extract.images import ImageInput, UnreadableImage, open_rgb
from guard.encoders.spec import EncoderSpec, SpecKind, TINY_TEST, parse_spec

log = logging.getLogger("guard")

_DATA = Path(__file__).resolve().parent.parent / "data"
TINY_CONFIG = _DATA / "tiny-test.json"
TINY_WEIGHTS = _DATA / "tiny-test.safetensors"
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")
_register_lock = threading.Lock()


class OpenClipEncoder:
    """A loaded open_clip model with its preprocessing and tokenizer.

    Attributes:
        name: canonical identity recorded in banks and verdicts (weights identity, not paths).
        meaningful: False for the tiny test encoder, whose similarities mean nothing semantically.
        dim: embedding width.
    """

    def __init__(self, model, preprocess, tokenizer, name: str, meaningful: bool,
                 device: torch.device, batch_size: int):
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.meaningful = meaningful
        self.device = device
        self.batch_size = batch_size
        self.dtype = next(model.parameters()).dtype
        self.dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None \
            else int(self.encode_texts(["x"]).shape[1])

    @property
    def label(self) -> str:
        from guard.encoders.spec import encoder_label

        return encoder_label(self.name)

    # Images -----------------------------------------------------------------------------
    def prepare_image(self, item: ImageInput, extract: Callable | None = None) -> tuple[torch.Tensor, dict]:
        """Decode and preprocess one input: the model-ready tensor, and facts about the input
        (its ``sha256``, plus what ``extract(image)`` returns, e.g. a perceptual hash)."""
        img, digest = open_rgb(item)
        info = {"sha256": digest}
        if extract is not None:
            info.update(extract(img))
        return self.preprocess(img), info

    @torch.inference_mode()
    def forward_images(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, dtype=self.dtype, non_blocking=True)
        return self.model.encode_image(batch, normalize=True).float().cpu()

    def encode_images(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """``[N, D]`` L2-normalised float32 embeddings; raises `UnreadableImage` on a bad input."""
        out = torch.empty((len(images), self.dim))
        for idx, emb, failures, _ in self.iter_image_batches(images):
            if failures:
                i, reason = next(iter(failures.items()))
                raise UnreadableImage(f"image {i}: {reason}")
            out[idx] = emb
        return out

    def iter_image_batches(self, images: Sequence[ImageInput], batch_size: int | None = None,
                           extract: Callable | None = None
                           ) -> Iterator[tuple[list[int], torch.Tensor, dict[int, str], dict[int, dict]]]:
        """Yield ``(indices, embeddings, failures, infos)`` per batch (see `prepare_image`).

        Decoding and preprocessing of the next batch run in a worker thread while the model
        runs on the current one (PIL and torch both release the GIL), so the model is rarely
        left waiting for input.
        """
        size = batch_size or self.batch_size
        chunks = [range(s, min(s + size, len(images))) for s in range(0, len(images), size)]
        prepare = functools.partial(self.prepare_image, extract=extract)
        yield from _prefetched(chunks, lambda c: _prepare_chunk(prepare, images, c), self.forward_images, self.dim)

    # Texts ------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``[N, D]`` L2-normalised float32 text embeddings."""
        outs = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start:start + self.batch_size])).to(self.device)
            outs.append(self.model.encode_text(tokens, normalize=True).float().cpu())
        return torch.cat(outs) if outs else torch.empty((0, getattr(self, "dim", 0)))


def _prepare_chunk(prepare: Callable, images: Sequence[ImageInput], chunk: range):
    tensors, idx, failures, infos = [], [], {}, {}
    for i in chunk:
        try:
            tensor, info = prepare(images[i])
        except UnreadableImage as exc:
            failures[i] = exc.reason
            continue
        tensors.append(tensor)
        idx.append(i)
        infos[i] = info
    return idx, (torch.stack(tensors) if tensors else None), failures, infos


def _prefetched(chunks, prepare, forward, dim):
    def embedded(prepared):
        idx, batch, failures, infos = prepared
        return idx, forward(batch) if batch is not None else torch.empty((0, dim)), failures, infos

    if len(chunks) <= 1:  # nothing to overlap (a generation server's usual call): no thread to start
        yield from (embedded(prepare(chunk)) for chunk in chunks)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-prefetch") as pool:
        pending = pool.submit(prepare, chunks[0])
        for nxt in chunks[1:] + [None]:
            prepared = pending.result()
            if nxt is not None:
                pending = pool.submit(prepare, nxt)
            yield embedded(prepared)


# Loading ------------------------------------------------------------------------------------
def load_encoder(spec: str, *, device: str | None = None, precision: str | None = None,
                 batch_size: int | None = None, allow_download: bool | None = None,
                 cache_dir: str | None = None) -> OpenClipEncoder:
    """Build the encoder that ``spec`` names.

    Args:
        spec: an encoder spec (see `guard.encoders.spec`).
        device: ``"cuda"``, ``"cpu"``, ... (default: CUDA when available).
        precision: ``"fp32"``, ``"fp16"``, ``"bf16"`` (default: fp16 on CUDA, fp32 on CPU).
        batch_size: images per forward (default: 64 on CUDA, 32 on CPU).
        allow_download: fetch missing weights from the hub (default: env ``GUARD_ALLOW_DOWNLOAD=1``).
        cache_dir: download cache (default: open_clip's / huggingface_hub's).

    Raises:
        ConfigError: the spec is malformed or names an unknown architecture or tag.
        EncoderUnavailable: the weights are not here and downloading is not allowed or failed.
    """
    import open_clip

    parsed = parse_spec(spec)
    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError) as exc:
        raise DeviceUnavailable(f"device {device!r} is not a device torch knows ({exc}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {device!r}: CUDA is not available on this machine; use --device cpu")
    prec = precision or ("fp16" if dev.type == "cuda" else "fp32")
    if allow_download is None:
        allow_download = os.environ.get("GUARD_ALLOW_DOWNLOAD", "") == "1"
    arch, kwargs, name = _resolve(parsed, allow_download, cache_dir)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, device=dev, precision=prec, require_pretrained=True, cache_dir=cache_dir, **kwargs)
        tokenizer = open_clip.get_tokenizer(arch, cache_dir=cache_dir)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        raise EncoderUnavailable(f"encoder {spec!r} could not be loaded: {exc}. " + _HOW_TO_SUPPLY) from None
    return OpenClipEncoder(model, preprocess, tokenizer, name, parsed.kind is not SpecKind.TINY_TEST,
                           dev, batch_size or (64 if dev.type == "cuda" else 32))


def encoder_name(spec: str) -> str:
    """The canonical identity of ``spec`` (what banks record), without loading any weights.

    ``ViT-L-14/openai`` -> ``ViT-L-14-quickgelu/openai``; a weights file -> its digest.
    """
    parsed = parse_spec(spec)
    if parsed.kind is SpecKind.TAG:
        return f"{_paired_arch(_check_arch(parsed.arch), parsed.tag)}/{parsed.tag}"
    if parsed.kind in (SpecKind.TINY_TEST, SpecKind.HF_HUB):
        return parsed.raw
    return _resolve(parsed, allow_download=False, cache_dir=None)[2]


def _paired_arch(arch: str, tag: str) -> str:
    """OpenAI weights were trained with QuickGELU; pair them so activations match."""
    import open_clip

    if (open_clip.get_pretrained_cfg(arch, tag) or {}).get("quick_gelu") and \
            not arch.endswith("-quickgelu") and f"{arch}-quickgelu" in open_clip.list_models():
        return f"{arch}-quickgelu"
    return arch


def _resolve(parsed: EncoderSpec, allow_download: bool, cache_dir: str | None) -> tuple[str, dict, str]:
    """Map a spec to (open_clip model name, create_model kwargs, canonical encoder name)."""
    import open_clip

    if parsed.kind is SpecKind.TINY_TEST:
        _register_tiny()
        if not TINY_WEIGHTS.is_file():
            raise EncoderUnavailable(f"the tiny test encoder weights are missing ({TINY_WEIGHTS}); "
                                     "run scripts/train_tiny_encoder.py to recreate them")
        return TINY_TEST, {"pretrained": str(TINY_WEIGHTS)}, TINY_TEST
    if parsed.kind is SpecKind.HF_HUB:
        if not allow_download and not _hf_cached(parsed.location, "open_clip_config.json", cache_dir):
            raise EncoderUnavailable(f"encoder {parsed.raw!r}: not in the local hub cache. " + _HOW_TO_SUPPLY)
        return parsed.raw, {}, parsed.raw
    if parsed.kind is SpecKind.LOCAL_DIR:
        folder = Path(parsed.location)
        if not (folder / "open_clip_config.json").is_file():
            raise EncoderUnavailable(f"encoder {parsed.raw!r}: {folder} has no open_clip_config.json. "
                                     + _HOW_TO_SUPPLY)
        from open_clip.factory import _find_checkpoint_in_dir
        weights = _find_checkpoint_in_dir(folder)
        if weights is None:
            raise EncoderUnavailable(f"encoder {parsed.raw!r}: no weights file in {folder}. " + _HOW_TO_SUPPLY)
        return parsed.raw, {}, f"local-dir:sha256-{_file_digest(weights)}"

    arch = _check_arch(parsed.arch)
    if parsed.kind is SpecKind.FILE:
        path = Path(parsed.location).expanduser()
        if not path.is_file():
            raise EncoderUnavailable(f"encoder {parsed.raw!r}: weights file {path} does not exist. "
                                     + _HOW_TO_SUPPLY)
        return arch, {"pretrained": str(path)}, f"{arch}:sha256-{_file_digest(path)}"

    tag = parsed.tag
    arch = _paired_arch(arch, tag)
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ConfigError(f"encoder {parsed.raw!r}: {arch} has no pretrained tag {tag!r}; "
                          f"known tags: {', '.join(tags) or 'none'}")
    name = f"{arch}/{tag}"
    cached = _cached_tag_weights(cfg, cache_dir)
    if cached is not None:
        preprocess = {k: cfg[k] for k in _PREPROCESS_KEYS if k in cfg}
        return arch, {"pretrained": cached, "force_preprocess_cfg": preprocess}, name
    if not allow_download:
        raise EncoderUnavailable(
            f"encoder {parsed.raw!r} (open_clip {name}): its weights are not in the local cache "
            f"({cfg.get('hf_hub') or cfg.get('url')}) and downloading is off. " + _HOW_TO_SUPPLY)
    return arch, {"pretrained": tag}, name


def _check_arch(arch: str) -> str:
    import open_clip

    if arch not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if m.lower().startswith(arch.lower()[:5])][:8]
        raise ConfigError(f"unknown open_clip architecture {arch!r}; similar: {', '.join(close) or 'none'}")
    return arch


def _hf_cached(repo: str, filename: str, cache_dir: str | None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hit = try_to_load_from_cache(repo_id=repo, filename=filename, cache_dir=cache_dir)
    return hit if isinstance(hit, str) else None


def _cached_tag_weights(cfg: dict, cache_dir: str | None) -> str | None:
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" means the default file name
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename.endswith((".bin", ".pth", ".pt")):
            stem = filename.rsplit(".", 1)[0]
            candidates.insert(0, stem.replace("pytorch_model", "model") + ".safetensors")
            candidates.insert(1, stem + ".safetensors")
        for name in candidates:
            hit = _hf_cached(repo, name, cache_dir)
            if hit:
                return hit
    if cfg.get("url"):
        target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if target.is_file():
            return str(target)
    return None


def _file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _register_tiny() -> None:
    import open_clip

    with _register_lock:
        if TINY_TEST not in open_clip.list_models():
            open_clip.add_model_config(TINY_CONFIG)


_HOW_TO_SUPPLY = (
    "Supply the weights in one of these ways: (1) allow a one-time download on a machine that "
    "reaches the hub: GUARD_ALLOW_DOWNLOAD=1 (or --allow-download); (2) point at a weights file: "
    "--encoder ARCH:/path/to/open_clip_model.safetensors; (3) point at a folder holding "
    "open_clip_config.json and the weights: --encoder local-dir:/path. The guard never runs a "
    "production encoder on random weights."
)
