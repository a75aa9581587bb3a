"""`Guard`: the one facade every adapter calls.

It owns a bank, a policy, an encoder and (with a state folder) a takedown list and an
audit log; each ``check_*`` method extracts signals, asks the indexes for matches, lets the
policy decide, and returns verdicts that all pass through `Guard._finish`: versions are
stamped there, strikes counted, and every verdict recorded once. Internal ``_`` checks
return unfinished verdicts so composite checks (publications) are recorded once, whole.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from . import __version__
from .bank import Bank, Character
from .encoders import encoder_label, encoder_name, load_encoder
from .errors import ConfigError, DeviceUnavailable
from . import bundles
from .bank.build import enroll
from .bundles import is_bundle, read_bundle
from .extract.model_file import inspect_model
from .extract.pdq import pdq
from .extract.text import fold
from .extract.training_metadata import metadata_limits, metadata_texts
from .images import ImageInput, UnreadableImage, describe, is_image, open_rgb
from .match.embedding import EmbeddingIndex, Match
from .match.text import TextMatcher
from .policy import Policy
from .state import AuditLog, TakedownList
from .verdict import Action, Finding, Signal, Surface, Verdict, format_finding

log = logging.getLogger("guard")

IMAGE_SURFACES = (Surface.TRAINING_IMAGE, Surface.GENERATED_IMAGE, Surface.COVER_IMAGE)
NON_FINITE = "the encoder returned NaN or infinite values for this image (an fp16 overflow?): not checked"


class Guard:
    """Checks items against a bank under a policy.

    Args:
        bank: the protected characters.
        policy: thresholds and rules (default: the shipped default policy).
        encoder: the encoder the bank was built with (checked; default: load the bank's own).

    Raises:
        BankError: the encoder is not the one the bank was built with.

    Example:
        >>> guard = Guard.open("embeddings/demo-bank.safetensors", encoder="tiny-test")
        >>> guard.check_prompt("ultraman fighting a kaiju").action
        <Action.BLOCK: 'block'>
    """

    def __init__(self, bank: Bank, policy: Policy | None = None, encoder=None,
                 state: str | os.PathLike | None = None):
        self.bank = bank
        self.policy = policy or Policy.load()
        # The encoder is loaded when first needed: scanning model files never needs it.
        self._encoder = encoder
        if encoder is not None:
            bank.require_encoder(encoder.name)
        self.state = state
        self.takedowns = TakedownList(state) if state is not None else None
        self.audit = AuditLog(state) if state is not None else None
        self.versions = {
            "guard": __version__,
            "bank": bank.digest,
            "policy": self.policy.digest,
            "encoder": encoder_label(bank.encoder),
        }
        text_policy = self.policy.section("text")
        self._windows = (int(text_policy.get("window_words", 12)), int(text_policy.get("window_stride", 6)))
        self._steer = bool(text_policy.get("steer", False))
        self._encoder_options: dict[str, Any] = {}
        self._index_bank()

    def _index_bank(self) -> None:
        """Derive the search structures from the bank (again after it changes)."""
        bank, text_policy = self.bank, self.policy.section("text")
        self._characters: list[Character] = bank.characters
        emb, owner, self._image_ref = bank.image_matrix()
        self._image_index = EmbeddingIndex(emb, owner)
        self._text = TextMatcher.from_bank(bank, benign=text_policy.get("benign", []),
                                           fuzzy=text_policy.get("fuzzy", True))
        temb, towner = bank.text_matrix()
        self._text_index = EmbeddingIndex(temb, towner)
        self._text_rows = [t for c in self._characters for t in bank.entry(c.id).texts]
        self.versions["bank"] = bank.digest

    def reopen_state(self) -> None:
        """Open new connections to the state folder: a process forked from this one must not
        use its parent's SQLite connections."""
        if self.state is not None:
            self.takedowns, self.audit = TakedownList(self.state), AuditLog(self.state)

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = _encoder_for_bank(self.bank, self._encoder_options)
        return self._encoder

    @classmethod
    def open(cls, bank: str | os.PathLike, policy: str | os.PathLike | None = None,
             encoder: str | None = None, state: str | os.PathLike | None = None,
             **encoder_options: Any) -> "Guard":
        """Load a bank file, a policy file and an encoder spec (default: the bank's encoder,
        loaded when first needed), with an optional state folder (takedown list, audit log)."""
        loaded = Bank.load(bank)
        spec = encoder or os.environ.get("GUARD_ENCODER")
        if spec and spec != loaded.encoder:
            loaded.require_encoder(encoder_name(spec))  # fails before any model is loaded
        guard = cls(loaded, Policy.load(policy), None, state)
        guard._encoder_options = {"spec": spec or loaded.encoder, **encoder_options}
        return guard

    # Images ---------------------------------------------------------------------------------
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
                the early-abort checks during denoising).

        Unreadable images get a ``format`` verdict; a failure of the guard itself gets a
        verdict with ``error`` set, which the policy's fail mode turns into an action. Images
        whose PDQ hash is near a taken-down image are blocked as re-uploads.
        """
        surface = _surface(surface, IMAGE_SURFACES)
        names = list(subjects) if subjects is not None else [describe(x, i) for i, x in enumerate(images)]
        if len(names) != len(images):
            raise ValueError(f"subjects has {len(names)} names for {len(images)} images")
        self.encoder  # noqa: B018 (loading it is configuration: a ConfigError, not a verdict)
        return self._checked(lambda: self._images(images, surface, account, names),
                             lambda error: [self._error(n, surface, error) for n in names], account, record)

    def _images(self, images: Sequence[ImageInput], surface: Surface | str, account: str | None,
                subjects: Sequence[str] | None = None) -> list[Verdict]:
        surface = _surface(surface, IMAGE_SURFACES)
        names = list(subjects) if subjects is not None else [describe(x, i) for i, x in enumerate(images)]
        floor = self._floor(Signal.CLIP_IMAGE, surface)
        pdq_policy = self.policy.section("pdq")
        extract = None
        if self.takedowns is not None and self.takedowns.has_images:
            dihedral = bool(pdq_policy.get("dihedral", True))
            extract = lambda img: {"pdq": pdq(img, dihedral)}  # noqa: E731 (runs in the prefetch thread)
        verdicts: list[Verdict | None] = [None] * len(images)
        try:
            for idx, emb, failures, infos in self.encoder.iter_image_batches(images, extract=extract):
                for i, reason in failures.items():
                    verdicts[i] = format_finding(names[i], surface, reason)
                finite = torch.isfinite(emb).all(1)
                if not finite.all():  # an image the encoder cannot represent is no reason to allow it
                    for i in (i for i, ok in zip(idx, finite.tolist()) if not ok):
                        verdicts[i] = Verdict(names[i], surface, error=NON_FINITE, error_action=self.policy.error_action)
                    idx, emb = [i for i, ok in zip(idx, finite.tolist()) if ok], emb[finite]
                for i, matches in zip(idx, self._image_index.search(emb, floor)):
                    findings = self._image_findings(matches, surface, account, infos[i]["sha256"])
                    findings += self._pdq_findings(infos[i].get("pdq"), surface)
                    verdicts[i] = Verdict(names[i], surface, tuple(findings))
        except (RuntimeError, ValueError, OSError, MemoryError) as exc:
            log.exception("image check failed")
            error = f"{type(exc).__name__}: {exc}"
            verdicts = [v or Verdict(names[i], surface, error=error, error_action=self.policy.error_action)
                        for i, v in enumerate(verdicts)]
        return verdicts  # type: ignore[return-value]

    def _pdq_findings(self, hashed, surface: Surface) -> list[Finding]:
        if hashed is None:
            return []
        hashes, quality = hashed
        pdq_policy = self.policy.section("pdq")
        if quality < int(pdq_policy.get("min_quality", 50)):
            return []
        findings = []
        for distance, entry in self.takedowns.by_pdq(hashes, int(pdq_policy.get("max_distance", 31)))[:3]:
            finding = self._takedown_finding(Signal.PDQ, 1.0 - distance / 256, entry, surface)
            if finding is not None:
                findings.append(dataclasses.replace(
                    finding, evidence={**finding.evidence, "distance": distance, "quality": quality}))
        return findings

    def _image_findings(self, matches: Iterable[Match], surface: Surface, account: str | None,
                        digest: str) -> list[Finding]:
        findings = []
        for m in matches:
            char = self._characters[m.owner]
            ref = char.references[int(self._image_ref[m.exemplar])]
            evidence = {"reference": ref.file, "reference_sha256": ref.sha256, "input_sha256": digest}
            finding = self._decide(Signal.CLIP_IMAGE, min(m.score, 1.0), surface, char, account, evidence)
            if finding is not None:
                findings.append(finding)
            if len(findings) == self.policy.top_k:
                break
        return findings

    # Text ------------------------------------------------------------------------------------
    def check_prompt(self, text: str, negative: str | None = None, account: str | None = None,
                     subject: str | None = None) -> Verdict:
        """Screen a prompt before any GPU work.

        Names in the ``negative`` prompt are a mitigation, never a finding. Under a policy with
        ``[text] steer = true``, a prompt that would only be flagged is allowed instead, and
        the verdict's ``steer`` holds the names and keywords to append to its negative prompt.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if negative is not None and not isinstance(negative, str):
            raise TypeError(f"negative must be a str or None, got {type(negative).__name__}")
        name = subject if subject is not None else text
        if self._text_index.size:
            self.encoder  # noqa: B018 (loading it is configuration: a ConfigError, not a verdict)
        [verdict] = self._checked(lambda: [self._prompt(text, negative, account, name)],
                                  lambda error: [self._error(name, Surface.PROMPT, error)], account)
        return verdict

    def _prompt(self, text: str, negative: str | None, account: str | None, name: str) -> Verdict:
        findings = self.text_findings(text, Surface.PROMPT, account)
        findings += self._clip_text_findings(text, Surface.PROMPT, account)
        verdict = Verdict(name, Surface.PROMPT, tuple(findings))
        if self._steer and verdict.action is Action.FLAG:
            verdict = self._steered(verdict, negative)
        return verdict

    def unscreened_prompt(self, reason: str, account: str | None = None) -> Verdict:
        """The (recorded) verdict for a generation whose prompt text was not available, e.g.
        a caller passing ``prompt_embeds``: as the policy's ``[generation] unscreened_prompt``
        says, allowed and saying so, or blocked."""
        subject = "<prompt text not available>"
        if self.policy.generation.unscreened_prompt == "block":
            verdict = format_finding(subject, Surface.PROMPT, f"{reason} (policy: block unscreened prompts)")
            verdict = dataclasses.replace(verdict, facts={"screened": False})
        else:
            verdict = Verdict(subject, Surface.PROMPT, facts={"screened": False, "reason": reason})
        return self._finish(verdict, account)

    # Decisions an adapter reaches (it acts; the verdicts are made and recorded here) ----------
    def refuse(self, subject: str, surface: Surface | str, reason: str, account: str | None = None) -> Verdict:
        """The recorded block verdict for something an adapter cannot hand over for checking
        (a pipeline folder without weight files, say): a ``format`` finding with ``reason``."""
        return self._finish(format_finding(subject, Surface(surface), reason), account)

    def check_latent_output(self, account: str | None = None) -> Verdict:
        """The recorded verdict for a generation that returns latents, which cannot be checked:
        blocked unless the policy's ``[generation] latent_output = "pass"``."""
        if self.policy.generation.latent_output == "refuse":
            verdict = format_finding("latents", Surface.GENERATED_IMAGE,
                                     "latent output cannot be checked (policy: refuse)")
        else:
            verdict = Verdict("latents", Surface.GENERATED_IMAGE,
                              facts={"screened": False, "reason": "latent output passed unchecked (policy: pass)"})
        return self._finish(verdict, account)

    def record_decision(self, verdicts: Sequence[Verdict], account: str | None = None,
                        **facts: Any) -> list[Verdict]:
        """Record verdicts made with ``record=False`` once an adapter acted on them (an early
        abort on a preview), with ``facts`` saying what it did; returns them as recorded."""
        return [self._finish(dataclasses.replace(v, facts={**v.facts, **facts}), account) for v in verdicts]

    def text_findings(self, text: str, surface: Surface, account: str | None = None,
                      where: Mapping[str, Any] | None = None, alias_signal: Signal = Signal.ALIAS,
                      cache: bool = False) -> list[Finding]:
        """Alias and keyword findings for any text (prompt, title, tag, training metadata).

        ``where`` is added to every finding's evidence (e.g. which metadata key held the text);
        ``alias_signal`` is the signal a name counts as (``metadata`` inside model files);
        ``cache`` remembers matches of short recurring texts (tags).
        """
        findings = []
        for hit in self._text.find(text, cache=cache):
            signal = alias_signal if hit.kind == "alias" else Signal.KEYWORDS
            if hit.kind == "alias":
                score = 1.0 - 0.1 * hit.evidence.get("edit_distance", 0)
            else:
                score = len(hit.evidence["keywords"]) / len(hit.evidence["set"])
            finding = self._decide(signal, score, surface, self.bank.character(hit.character), account,
                                   {**hit.evidence, **(where or {})})
            if finding is not None:
                findings.append(finding)
        return findings

    def _clip_text_findings(self, text: str, surface: Surface, account: str | None) -> list[Finding]:
        """The prompt, and windows of it, against the bank's name embeddings."""
        if self._text_index.size == 0 or not text.strip():
            return []
        windows = _windows(text, *self._windows)
        matches = self._text_index.search(self.encoder.encode_texts(windows), self._floor(Signal.CLIP_TEXT, surface))
        best: dict[int, tuple[float, int, int]] = {}
        for w, row in enumerate(matches):
            for m in row:
                if m.score > best.get(m.owner, (-2.0,))[0]:
                    best[m.owner] = (m.score, w, m.exemplar)
        findings = []
        for owner, (score, w, row) in sorted(best.items(), key=lambda kv: -kv[1][0]):
            evidence = {"window": windows[w], "name": self._text_rows[row]}
            if not self.encoder.meaningful:
                evidence["note"] = "tiny test encoder: this similarity has no semantic meaning"
            finding = self._decide(Signal.CLIP_TEXT, min(score, 1.0), surface, self._characters[owner],
                                   account, evidence)
            if finding is not None:
                findings.append(finding)
        return findings[: self.policy.top_k]

    def _steered(self, verdict: Verdict, negative: str | None) -> Verdict:
        """Allow a flagged prompt, steering away from the flagged characters (CopyCat mitigation)."""
        already = fold(negative or "")
        terms: dict[str, None] = {}
        findings = []
        for f in verdict.findings:
            if f.action is Action.FLAG:
                char = self.bank.character(f.subject)
                for term in [*char.names.values(), *char.aliases, *itertools.chain(*char.keywords)]:
                    if fold(term) not in already:
                        terms.setdefault(term, None)
                f = dataclasses.replace(f, action=Action.ALLOW, evidence={**f.evidence, "steered": True})
            findings.append(f)
        return dataclasses.replace(verdict, findings=tuple(findings), steer=", ".join(terms) or None)

    # Model files -------------------------------------------------------------------------------
    def check_model_file(self, path: str | os.PathLike, *, account: str | None = None,
                         trigger_words: Sequence[str] = (), metadata_only: bool = False,
                         subject: str | None = None) -> Verdict:
        """Gate a LoRA / Checkpoint / embedding file before it is loaded or published.

        Args:
            path: the file (never unpickled; safetensors headers are read with bounds).
            account: the uploader; authorized accounts are allowed for their characters.
            trigger_words: words the uploader declared (e.g. from the upload form).
            metadata_only: read the safetensors header only (no hashes, no fingerprint,
                so no takedown matching).

        The verdict's ``facts`` carry the format, base model family, hashes and, for pickle
        files, the globals the file would import.
        """
        name = subject or os.fspath(path)
        [verdict] = self._checked(lambda: [self._model_file(path, account, trigger_words, metadata_only, subject)],
                                  lambda error: [self._error(name, Surface.MODEL_FILE, error)], account)
        return verdict

    def _model_file(self, path: str | os.PathLike, account: str | None, trigger_words: Sequence[str] = (),
                    metadata_only: bool = False, subject: str | None = None) -> Verdict:
        report = inspect_model(path, metadata_only=metadata_only,
                               blake3=self.policy.section("model").get("blake3", True))
        findings = [_format(reason) for reason in report.problems]
        facts = report.facts()
        if report.pickle is not None:
            facts["pickle_globals"] = [f"{m}.{n}" for m, n in sorted(report.pickle.globals)]
            for reason in report.pickle.unsafe[:20]:
                decision = self.policy.decide(Signal.PICKLE, 1.0, Surface.MODEL_FILE)
                findings.append(Finding("unsafe-pickle", Signal.PICKLE, 1.0, 1.0,
                                        decision.action if decision else Action.BLOCK, {"reason": reason}))
        limits = metadata_limits(report.metadata)
        findings += [_format(reason) for reason in limits]
        if not limits:  # metadata too large to screen whole is refused above, not screened in part
            findings += self._metadata_findings(report.metadata, trigger_words, account)
        else:
            findings += self._metadata_findings({}, trigger_words, account)
        findings += self._hash_mismatch(report)
        findings += self._takedown_findings(report)
        return Verdict(subject or os.fspath(path), Surface.MODEL_FILE, tuple(findings), facts=facts)

    def _metadata_findings(self, metadata: Mapping[str, str], trigger_words: Sequence[str],
                           account: str | None) -> list[Finding]:
        texts = list(metadata_texts(metadata)) + [(w, {"key": "trigger_words"}) for w in trigger_words]
        kept: dict[tuple, Finding] = {}
        for text, where in texts:
            for f in self.text_findings(text, Surface.MODEL_FILE, account, where, alias_signal=Signal.METADATA,
                                        cache=True):
                # Texts come most-used tag first: keep the first finding per character, signal and key.
                kept.setdefault((f.subject, f.signal, where["key"]), f)
        return list(kept.values())

    def _hash_mismatch(self, report) -> list[Finding]:
        embedded = report.metadata.get("sshs_model_hash", "").strip().lower()
        computed = report.hashes.tensor_sha256 if report.hashes else None
        if not embedded or not computed or embedded == computed:
            return []
        action = Action(self.policy.section("model").get("hash_mismatch", "flag"))
        return [Finding("sshs_model_hash", Signal.METADATA, 1.0, 1.0, action,
                        {"key": "sshs_model_hash", "embedded": embedded, "computed": computed,
                         "reason": "the tensor data changed after the hash was written"})]

    def _takedown_findings(self, report) -> list[Finding]:
        if self.takedowns is None or report.hashes is None:
            return []
        findings = []
        for kind, entry in self.takedowns.by_hash(report.hashes.sha256, report.hashes.tensor_sha256):
            signal = Signal.FILE_HASH if kind == "file_hash" else Signal.TENSOR_HASH
            findings.append(self._takedown_finding(signal, 1.0, entry))
        if report.fingerprint is not None and not findings:
            floor = self.policy.lowest_threshold(Signal.FINGERPRINT, Surface.MODEL_FILE, self.bank.encoder)
            for score, entry in self.takedowns.by_fingerprint(report.fingerprint, floor)[:3]:
                findings.append(self._takedown_finding(Signal.FINGERPRINT, score, entry))
        return [f for f in findings if f is not None]

    def _takedown_finding(self, signal: Signal, score: float, entry,
                          surface: Surface = Surface.MODEL_FILE) -> Finding | None:
        decision = self.policy.decide(signal, score, surface, encoder=self.bank.encoder, character=entry.character)
        if decision is None:
            return None
        return Finding(f"takedown:{entry.notice}", signal, score, decision.threshold, decision.action,
                       {"notice": entry.notice, "character": entry.character, "takedown_id": entry.id,
                        "taken_down": entry.created})

    def take_down(self, item: str | os.PathLike, notice: str, character: str | None = None,
                  reason: str | None = None, *, confine: Sequence[Path] | None = None) -> list:
        """Put an item on the takedown list so it stays down; returns the entries made.

        A model file keeps its hashes and LoRA fingerprint; an image its SHA-256 and PDQ hash;
        a publication bundle (folder or JSON manifest) all of its model file and images.
        ``confine``: folders every file read must lie below (`PathNotAllowed` otherwise).
        """
        if self.takedowns is None:
            raise ConfigError("no state folder: pass --state DIR (or GUARD_STATE) to keep a takedown list")
        if character is not None:
            self.bank.character(character)  # a typo in the character id is an error, not a silent entry
        path = bundles.confined(Path(item), confine)
        entry = functools.partial(self.takedowns.add, notice, character=character, reason=reason)
        if is_bundle(path):
            parts = read_bundle(path, confine)
            made = []
            for part in [parts.model] + parts.images if parts.model else parts.images:
                made += self.take_down(part, notice, character, reason, confine=confine)
            return made
        if is_image(path):
            try:
                img, digest = open_rgb(path)
            except UnreadableImage as exc:
                raise ConfigError(f"{path}: cannot take this image down, it cannot be read ({exc.reason})") from None
            hashes, quality = pdq(img)
            return [entry(subject=str(path), sha256=digest, pdq=hashes[0].tobytes(), pdq_quality=quality)]
        report = inspect_model(path)
        if report.hashes is None:
            raise ConfigError(f"{path} cannot be hashed: {'; '.join(report.problems) or 'unreadable'}")
        return [entry(subject=str(path), sha256=report.hashes.sha256, tensor_sha256=report.hashes.tensor_sha256,
                      fingerprint=report.fingerprint)]

    # Datasets, publications, notices ------------------------------------------------------------
    def check_dataset(self, folder: str | os.PathLike, account: str | None = None, *,
                      confine: Sequence[Path] | None = None) -> tuple[Verdict, list[Verdict]]:
        """Screen a LoRA training set: a verdict for the set and one per image (see `guard.bundles`).
        ``confine``: folders every file read must lie below (`PathNotAllowed` otherwise)."""
        folder = bundles.confined(Path(folder), confine)
        if not folder.is_dir():
            raise ConfigError(f"dataset {folder} is not a folder")
        self.encoder  # noqa: B018 (loading it is configuration: a ConfigError, not a verdict)
        found: list[list[Verdict]] = []

        def work() -> list[Verdict]:
            dataset, images = bundles.check_dataset(self, folder, account, confine)
            found.append(images)
            return [dataset]

        [dataset] = self._checked(work, lambda error: [self._error(str(folder), Surface.TRAINING_IMAGE, error)],
                                  account)
        return dataset, [self._finish(v, account) for v in (found[0] if found else [])]

    def check_publication(self, bundle: str | os.PathLike, account: str | None = None, *,
                          confine: Sequence[Path] | None = None) -> Verdict:
        """Screen a whole publication before it goes public (see `guard.bundles`).
        ``confine``: folders every file read must lie below (`PathNotAllowed` otherwise)."""
        path = bundles.confined(Path(bundle), confine)
        if not path.exists():
            raise ConfigError(f"publication {path} does not exist")
        owner: list[str | None] = [account]

        def work() -> list[Verdict]:
            verdict, owner[0] = bundles.check_publication(self, path, account, confine)
            return [verdict]

        [verdict] = self._checked(work, lambda error: [self._error(str(path), Surface.PUBLICATION, error)],
                                  account, owner=owner)
        return verdict

    def enroll(self, character: str, refs: str | os.PathLike, holder: str | None = None,
               accounts: Sequence[str] = (), names: Mapping[str, str] | None = None) -> Character:
        """Enroll or update a character from a rights holder's notice; only new images are encoded."""
        char = enroll(self.bank, character, Path(refs), self.encoder, holder, accounts, names)
        self._index_bank()
        return char

    # Shared -----------------------------------------------------------------------------------
    def _decide(self, signal: Signal, score: float, surface: Surface, char: Character,
                account: str | None, evidence: Mapping[str, Any]) -> Finding | None:
        decision = self.policy.decide(signal, score, surface, encoder=self.bank.encoder,
                                      character=char.id, bank_thresholds=char.thresholds)
        if decision is None:
            return None
        action, evidence = decision.action, dict(evidence)
        if account is not None and account in self.authorized(char.id):
            evidence["authorized_account"] = account
            evidence["would_be"] = action.value
            action = Action.ALLOW
        return Finding(char.id, signal, score, decision.threshold, action, evidence)

    def authorized(self, character: str) -> frozenset[str]:
        """Accounts allowed to use ``character``: the bank's and the policy's allowlists."""
        return frozenset(self.bank.character(character).authorized_accounts) | \
            self.policy.authorized_accounts(character)

    def _floor(self, signal: Signal, surface: Surface) -> float:
        chars = [(c.id, c.thresholds) for c in self._characters]
        return self.policy.lowest_threshold(signal, surface, self.bank.encoder, chars)

    def _checked(self, work, fallback, account: str | None, record: bool = True,
                 owner: list | None = None) -> list[Verdict]:
        """The one fail-closed boundary every public check goes through.

        ``work`` returns unfinished verdicts. Any exception of the guard's own (an encoder
        that fails, a read error while hashing, SQLite, a bug) becomes ``fallback(error)``:
        verdicts whose ``error`` says what failed and whose action is the policy's fail mode.
        A `ConfigError` (a missing bank, encoder weights, a caller's bad path) is not a
        check's outcome and propagates with its message. Then every verdict is finished.
        """
        try:
            verdicts = work()
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 (this is the boundary: nothing the guard raises gets out)
            log.exception("check failed; the policy's fail mode decides")
            verdicts = fallback(f"{type(exc).__name__}: {exc}")
        account = owner[0] if owner else account
        if not record:
            return [v.with_versions(self.versions) for v in verdicts]
        return [self._finish(v, account) for v in verdicts]

    def _error(self, subject: str, surface: Surface, error: str) -> Verdict:
        return Verdict(subject, surface, error=error, error_action=self.policy.error_action)

    def _finish(self, verdict: Verdict, account: str | None = None) -> Verdict:
        """Every verdict leaves through here: versions stamped, strikes counted, recorded once.

        A log that cannot be written is the guard failing: the verdict then carries that error
        (and the fail mode's action), since a measure that was not recorded cannot be shown."""
        try:
            return self._stamp_and_record(verdict, account)
        except Exception as exc:  # noqa: BLE001
            log.exception("recording a verdict failed")
            failed = dataclasses.replace(verdict.with_versions(self.versions),
                                         error=f"the audit log could not record this verdict: "
                                               f"{type(exc).__name__}: {exc}",
                                         error_action=self.policy.error_action)
            return failed

    def _stamp_and_record(self, verdict: Verdict, account: str | None) -> Verdict:
        verdict = verdict.with_versions(self.versions)
        strikes = self.policy.section("strikes")
        if strikes.get("enabled") and account and self.audit is not None and verdict.action is Action.BLOCK:
            days = float(strikes.get("window_days", 30))
            count = self.audit.blocked_since(account, days) + 1
            level = next((lvl for lvl in ("suspend", "notify", "warn") if count >= int(strikes.get(lvl, 10 ** 9))),
                         None)
            verdict = dataclasses.replace(verdict, facts={**verdict.facts, "strikes": {
                "account": account, "blocked_attempts": count, "window_days": days, "level": level}})
        if self.audit is not None:
            self.audit.record(verdict, account)
        return verdict


def _surface(value: Surface | str, allowed: Sequence[Surface]) -> Surface:
    try:
        surface = Surface(value)
    except ValueError:
        raise ValueError(f"surface={value!r} is not a surface; use one of "
                         f"{', '.join(s.value for s in allowed)}") from None
    if surface not in allowed:
        raise ValueError(f"surface={surface.value!r} does not apply here; use one of "
                         f"{', '.join(s.value for s in allowed)}")
    return surface


def _format(reason: str) -> Finding:
    return format_finding("", Surface.MODEL_FILE, reason).findings[0]


def _windows(text: str, size: int, stride: int) -> list[str]:
    """The whole text, and overlapping word windows of it when it is long (a name diluted in
    a 70-token prompt weighs little in the whole prompt's embedding)."""
    words = text.split()
    windows = [text]
    if len(words) > size:
        windows += [" ".join(words[i:i + size]) for i in range(0, len(words) - size + stride, stride)]
    return windows


def _encoder_for_bank(bank: Bank, options: Mapping[str, Any]):
    options = dict(options)
    spec = options.pop("spec", bank.encoder)
    try:
        encoder = load_encoder(spec, **options)
    except ConfigError as exc:
        if spec != bank.encoder or isinstance(exc, DeviceUnavailable):
            raise
        raise ConfigError(f"the bank's encoder {bank.encoder!r} cannot be loaded by that name ({exc}); "
                          "pass the encoder spec explicitly (--encoder)") from None
    bank.require_encoder(encoder.name)
    return encoder
