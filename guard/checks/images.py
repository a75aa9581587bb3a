"""Images: generations, covers, training images, against the bank's references and the
takedown list's images."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable, Sequence

from guard.extract.images import ImageInput, describe
from guard.extract.pdq import pdq
from guard.verdict import Finding, Signal, Surface, Verdict

if TYPE_CHECKING:
    from guard.match.embedding import Match

log = logging.getLogger("guard")

IMAGE_SURFACES = (Surface.TRAINING_IMAGE, Surface.GENERATED_IMAGE, Surface.COVER_IMAGE)
NON_FINITE = "the encoder returned NaN or infinite values for this image (an fp16 overflow?): not checked"


class ImageChecks:
    """`Guard.check_images` and what it is made of (a part of `Guard`)."""

    def check_images(self, images: Sequence[ImageInput], surface: Surface | str = Surface.GENERATED_IMAGE,
                     account: str | None = None, subjects: Sequence[str] | None = None,
                     record: bool = True) -> list[Verdict]:
        """One verdict per image, in input order.

        Args:
            images: paths, encoded bytes, PIL images or HxWxC arrays.
            surface: where the images sit (``generated_image``, ``cover_image``, ``training_image``).
            account: the uploading/generating account; authorized accounts are allowed for
                their characters (the verdict says so).
            subjects: names for the verdicts (default: the path, or ``image[i]``).
            record: write the verdicts to the audit log (off for transient previews, such as
                the early-abort checks during denoising, and for the parts of a composite
                check, which is recorded whole).

        Unreadable images get a ``format`` verdict; a failure of the guard itself gets a
        verdict with ``error`` set, which the policy's fail mode turns into an action. Images
        whose PDQ hash is near a taken-down image are blocked as re-uploads.
        """
        surface = surface_in(surface, IMAGE_SURFACES)
        names = list(subjects) if subjects is not None else [describe(x, i) for i, x in enumerate(images)]
        if len(names) != len(images):
            raise ValueError(f"subjects has {len(names)} names for {len(images)} images")
        self.encoder  # noqa: B018 (loading it is configuration: a ConfigError, not a verdict)
        return self._checked(lambda: self._images(images, surface, account, names),
                             lambda error: [self._error(n, surface, error) for n in names], account, record)

    def _images(self, images: Sequence[ImageInput], surface: Surface, account: str | None,
                names: Sequence[str]) -> list[Verdict]:
        import torch

        floor = self._floor(Signal.CLIP_IMAGE, surface)
        extract = None
        if self._takedown_matcher is not None and self._takedown_matcher.has_images:
            dihedral = self.policy.pdq.dihedral
            extract = lambda img: {"pdq": pdq(img, dihedral)}  # noqa: E731 (runs in the prefetch thread)
        verdicts: list[Verdict | None] = [None] * len(images)
        try:
            for idx, emb, failures, infos in self.encoder.iter_image_batches(images, extract=extract):
                for i, reason in failures.items():
                    verdicts[i] = self.format_verdict(names[i], surface, reason)
                finite = torch.isfinite(emb).all(1)
                if not finite.all():  # an image the encoder cannot represent is no reason to allow it
                    for i in (i for i, ok in zip(idx, finite.tolist()) if not ok):
                        verdicts[i] = self._error(names[i], surface, NON_FINITE)
                    idx, emb = [i for i, ok in zip(idx, finite.tolist()) if ok], emb[finite]
                for i, matches in zip(idx, self._image_search[0].search(emb, floor)):
                    findings = self._image_findings(matches, surface, account, infos[i]["sha256"])
                    findings += self._pdq_findings(infos[i].get("pdq"), surface)
                    verdicts[i] = Verdict(names[i], surface, tuple(findings))
        except (RuntimeError, ValueError, OSError, MemoryError) as exc:
            log.exception("image check failed")
            error = f"{type(exc).__name__}: {exc}"
            verdicts = [v or self._error(names[i], surface, error) for i, v in enumerate(verdicts)]
        return verdicts  # type: ignore[return-value]

    def _pdq_findings(self, hashed, surface: Surface) -> list[Finding]:
        if hashed is None:
            return []
        hashes, quality = hashed
        findings = []
        index = self._takedown_matcher.index()
        for distance, entry in index.by_pdq(hashes, self.policy.pdq.max_distance):
            decision = self.policy.pdq_match(distance, quality, surface, entry.character)
            if decision is not None:
                findings.append(self._takedown_finding(Signal.PDQ, float(distance), entry, decision,
                                                       {"distance": distance, "quality": quality}))
            if len(findings) == self.policy.top_k:
                break
        return findings

    def _image_findings(self, matches: Iterable["Match"], surface: Surface, account: str | None,
                        digest: str) -> list[Finding]:
        findings = []
        refs = self._image_search[1]
        for m in matches:
            char = self._characters[m.owner]
            ref = char.references[int(refs[m.exemplar])]
            evidence = {"reference": ref.file, "reference_sha256": ref.sha256, "input_sha256": digest}
            finding = self._decide(Signal.CLIP_IMAGE, min(m.score, 1.0), surface, char, account, evidence)
            if finding is not None:
                findings.append(finding)
            if len(findings) == self.policy.top_k:
                break
        return findings


def surface_in(value: Surface | str, allowed: Sequence[Surface]) -> Surface:
    """``value`` as a surface of ``allowed``, or a `ValueError` listing them."""
    try:
        surface = Surface(value)
    except ValueError:
        raise ValueError(f"surface={value!r} is not a surface; use one of "
                         f"{', '.join(s.value for s in allowed)}") from None
    if surface not in allowed:
        raise ValueError(f"surface={surface.value!r} does not apply here; use one of "
                         f"{', '.join(s.value for s in allowed)}")
    return surface
