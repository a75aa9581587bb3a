"""Composite items: training sets and publications.

A **training set** is a folder of images (and kohya caption files beside them) a user
uploads to train a LoRA. Every image is checked as a ``training_image``; the set's verdict
comes from the share of matching images (policy ``[dataset]``: flag from ``flag_images``
images, block from ``block_share`` of them).

A **publication** is what goes public together: title, description, tags, trigger words,
category, cover and sample images, model file. It is a folder (``publication.json``
optional: without it, ``cover.*`` is the cover, other images are samples, the model file is
the model) or a JSON manifest. The bundle gets one verdict with the findings of every part;
each finding's evidence says which ``part`` it came from.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from guard.errors import ConfigError, PathNotAllowed
from guard.extract.model_file import is_model_file
from guard.extract.images import image_files, is_image
from guard.verdict import Action, Finding, Signal, Surface, Verdict

if TYPE_CHECKING:
    from guard.facade import Guard

#: Character signals that make an image of a training set count towards its share.

MANIFEST = "publication.json"
CAPTION_SUFFIXES = (".txt", ".caption")
_TEXT_PARTS = ("title", "description", "category")
_CHARACTER_SIGNALS = {Signal.CLIP_IMAGE, Signal.PDQ, Signal.ALIAS, Signal.KEYWORDS}


@dataclass
class Bundle:
    source: Path
    text: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    trigger_words: list[str] = field(default_factory=list)
    account: str | None = None
    cover: Path | None = None
    samples: list[Path] = field(default_factory=list)
    model: Path | None = None

    @property
    def images(self) -> list[Path]:
        return ([self.cover] if self.cover else []) + self.samples


def confined(path: Path, roots: Sequence[Path] | None) -> Path:
    """``path`` with its links resolved, if ``roots`` is None or it lies below one of them;
    else `PathNotAllowed` naming it. A bundle's own manifest, the files of its folder and the
    images of a training set all pass through here before anything opens them."""
    if roots is None:
        return path
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise PathNotAllowed(str(path) if resolved == Path(os.path.abspath(path)) else f"{path} (-> {resolved})")
    return resolved


def is_bundle(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() == ".json"


def read_bundle(path: Path, confine: Sequence[Path] | None = None) -> Bundle:
    """Read a publication folder or manifest; `ConfigError` names what is wrong. With
    ``confine``, every file the bundle names or holds must lie below one of those folders."""
    path = confined(path, confine)
    if path.is_dir():
        manifest = path / MANIFEST
        if manifest.is_file():
            return _from_manifest(confined(manifest, confine), confine)
        files = sorted(confined(p, confine) for p in path.rglob("*") if p.is_file() or p.is_symlink())
        files = [p for p in files if p.is_file()]
        images = [p for p in files if is_image(p)]
        cover = next((p for p in images if p.stem.lower() == "cover"), images[0] if images else None)
        models = [p for p in files if is_model_file(p)]
        return Bundle(path, cover=cover, samples=[p for p in images if p != cover], model=models[0] if models else None)
    if path.is_file():
        return _from_manifest(path, confine)
    raise ConfigError(f"publication {path} is neither a folder nor a JSON manifest")


def _from_manifest(path: Path, confine: Sequence[Path] | None = None) -> Bundle:
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"publication manifest {path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"publication manifest {path}: must be a JSON object")
    base = path.parent

    def strings(key: str) -> list[str]:
        value = data.get(key) or []
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"publication manifest {path}: {key} must be a list of strings")
        return [v for v in value if v]

    def file(value: Any, key: str) -> Path | None:
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise ConfigError(f"publication manifest {path}: {key} must be a file path")
        return confined((base / value).resolve() if not Path(value).is_absolute() else Path(value), confine)

    return Bundle(
        path,
        text={k: data[k] for k in _TEXT_PARTS if isinstance(data.get(k), str) and data[k]},
        tags=strings("tags"), trigger_words=strings("trigger_words"),
        account=data.get("account") if isinstance(data.get("account"), str) else None,
        cover=file(data.get("cover"), "cover"),
        samples=[file(v, "samples") for v in strings("samples")],
        model=file(data.get("model"), "model"),
    )


def _part(findings, part: str) -> list[Finding]:
    return [dataclasses.replace(f, evidence={**f.evidence, "part": part}) for f in findings]


def check_publication(guard: "Guard", path: Path, account: str | None,
                      confine: Sequence[Path] | None = None) -> tuple[Verdict, str | None]:
    """The publication's verdict (unfinished) and the account it belongs to."""
    bundle = read_bundle(path, confine)
    account = account or bundle.account
    surface = Surface.PUBLICATION
    findings: list[Finding] = []
    for part, text in bundle.text.items():
        findings += _part(guard.text_findings(text, surface, account), part)
    for tag in bundle.tags:
        findings += _part(guard.text_findings(tag, surface, account, {"tag": tag}), "tags")
    if bundle.tags:  # indirect anchors can be spread over several tags
        joined = [f for f in guard.text_findings(", ".join(bundle.tags), surface, account)
                  if f.signal is Signal.KEYWORDS]
        findings += _part(joined, "tags")
    for word in bundle.trigger_words:
        findings += _part(guard.text_findings(word, surface, account, {"trigger_word": word}), "trigger_words")
    images = [p for p in bundle.images if p is not None]
    errors = []
    checked = guard.check_images([str(p) for p in images], Surface.COVER_IMAGE, account, record=False) if images else []
    for image, verdict in zip(images, checked):
        name = "cover" if image == bundle.cover else f"sample:{image.name}"
        findings += _part(verdict.findings, name)
        if verdict.error:  # a part that could not be checked leaves the whole unchecked
            errors.append(f"{name}: {verdict.error}")
    facts: dict[str, Any] = {"parts": {"text": sorted(bundle.text), "tags": len(bundle.tags),
                                       "trigger_words": len(bundle.trigger_words), "images": len(images),
                                       "model": str(bundle.model) if bundle.model else None}}
    if bundle.model is not None:
        model = guard.check_model_file(bundle.model, account=account, trigger_words=bundle.trigger_words,
                                       record=False)
        findings += _part(model.findings, "model")
        facts["model"] = dict(model.facts)
        if model.error:
            errors.append(f"model: {model.error}")
    strongest = Action.strongest(f.action for f in findings)
    facts["decided_by"] = sorted({f.evidence["part"] for f in findings if f.action is strongest}) \
        if strongest is not Action.ALLOW else []
    return Verdict(str(path), surface, tuple(findings), facts=facts, error="; ".join(errors) or None,
                   error_action=guard.policy.error_action), account


def check_dataset(guard: "Guard", folder: Path, account: str | None,
                  confine: Sequence[Path] | None = None) -> tuple[Verdict, list[Verdict]]:
    """The training set's verdict and one per image (all unfinished)."""
    if not folder.is_dir():
        raise ConfigError(f"dataset {folder} is not a folder")
    images = [confined(p, confine) if confine is not None else p for p in image_files(folder, recursive=True)]
    surface = Surface.TRAINING_IMAGE
    verdicts = guard.check_images([str(p) for p in images], surface, account, record=False) if images else []
    captions = 0
    for i, image in enumerate(images):
        for suffix in CAPTION_SUFFIXES:
            caption = image.with_suffix(suffix)
            if caption.is_file() and confined(caption, confine):
                captions += 1
                text = caption.read_bytes()[:100_000].decode("utf-8", errors="replace")
                found = guard.text_findings(text, surface, account, {"caption": caption.name})
                verdicts[i] = verdicts[i].merge(Verdict(verdicts[i].subject, surface, tuple(found)))
    by_character: dict[str, list[tuple[str, Finding]]] = defaultdict(list)
    unreadable = []
    for image, verdict in zip(images, verdicts):
        seen = set()
        for f in verdict.findings:
            if f.signal is Signal.FORMAT:
                unreadable.append(image.name)
            elif f.signal in _CHARACTER_SIGNALS and f.action is not Action.ALLOW and f.subject not in seen:
                seen.add(f.subject)
                by_character[f.subject].append((image.name, f))
    total = len(images)
    findings = []
    for subject, hits in sorted(by_character.items(), key=lambda kv: -len(kv[1])):
        decision = guard.policy.dataset_decision(len(hits), total)
        if decision is None:
            continue
        share = round(len(hits) / max(1, total), 4)
        findings.append(Finding(subject, Signal.DATASET_SHARE, share, decision.threshold, decision.action,
                                {"images": len(hits), "of": total, "share": share, "matched_by": sorted({f.signal.value for _, f in hits}),
                                 "examples": [name for name, _ in hits[:5]]}))
    if unreadable:
        findings.append(Finding("unreadable", Signal.FORMAT, 1.0, None, guard.policy.unreadable_images,
                                {"images": len(unreadable), "of": total, "examples": unreadable[:5],
                                 "reason": "some training images cannot be read"}))
    if not images:
        return guard.format_verdict(str(folder), surface, "the dataset folder holds no images"), []
    facts = {"images": len(images), "captions": captions}
    failed = [v for v in verdicts if v.error]
    error = f"{len(failed)} of {len(images)} images could not be checked: {failed[0].error}" if failed else None
    return Verdict(str(folder), surface, tuple(findings), facts=facts, error=error,
                   error_action=guard.policy.error_action), verdicts


class BundleChecks:
    """`Guard.check_dataset` and `Guard.check_publication` (a part of `Guard`)."""

    def check_dataset(self, folder: str | os.PathLike, account: str | None = None, *,
                      confine: Sequence[Path] | None = None) -> tuple[Verdict, list[Verdict]]:
        """Screen a LoRA training set: a verdict for the set and one per image.
        ``confine``: folders every file read must lie below (`PathNotAllowed` otherwise)."""
        folder = confined(Path(folder), confine)
        if not folder.is_dir():
            raise ConfigError(f"dataset {folder} is not a folder")
        self.encoder  # noqa: B018 (loading it is configuration: a ConfigError, not a verdict)
        found: list[list[Verdict]] = []

        def work() -> list[Verdict]:
            dataset, images = check_dataset(self, folder, account, confine)
            found.append(images)
            return [dataset]

        [dataset] = self._checked(work, lambda error: [self._error(str(folder), Surface.TRAINING_IMAGE, error)],
                                  account)
        return dataset, [self._finish(v, account) for v in (found[0] if found else [])]

    def check_publication(self, bundle: str | os.PathLike, account: str | None = None, *,
                          confine: Sequence[Path] | None = None) -> Verdict:
        """Screen a whole publication before it goes public: one verdict, recorded once.
        ``confine``: folders every file read must lie below (`PathNotAllowed` otherwise)."""
        path = confined(Path(bundle), confine)
        if not path.exists():
            raise ConfigError(f"publication {path} does not exist")
        owner: list[str | None] = [account]

        def work() -> list[Verdict]:
            verdict, owner[0] = check_publication(self, path, account, confine)
            return [verdict]

        [verdict] = self._checked(work, lambda error: [self._error(str(path), Surface.PUBLICATION, error)],
                                  account, owner=owner)
        return verdict
