"""`Guard`: the one facade every adapter calls.

It owns a bank, a policy, an encoder and (with a state folder) a takedown list and an
audit log. Its checks live in `guard.checks`, one module per surface (images, text, model
files, bundles); each extracts signals, asks the indexes for matches, lets the policy decide,
and returns verdicts that all pass through `Guard._finish`: versions are stamped there,
strikes counted, and every verdict recorded once. A composite check (a publication) asks
for its parts unrecorded (``record=False``) and is recorded once, whole.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from guard import __version__
from guard.bank import Bank, Character
from guard.checks.bundles import BundleChecks, confined, is_bundle, read_bundle
from guard.checks.images import IMAGE_SURFACES, ImageChecks
from guard.checks.model_files import ModelFileChecks
from guard.checks.text import TextChecks
from guard.checks.workflows import LRU, ModelVerdictCache, WorkflowChecks, WorkflowFile, WorkflowText
from guard.encoders.protocol import Encoder
from guard.encoders import encoder_label, encoder_name, load_encoder, meaningful
from guard.errors import ConfigError, DeviceUnavailable
from guard.extract.images import UnreadableImage, is_image, open_rgb
from guard.extract.model_file import inspect_model
from guard.extract.pdq import pdq
from guard.match.takedowns import TakedownMatcher
from guard.match.text import TextMatcher
from guard.policy import Policy
from guard.state import AuditLog, TakedownList
from guard.verdict import Action, Finding, Signal, Surface, Verdict

log = logging.getLogger("guard")

__all__ = ["Guard", "IMAGE_SURFACES", "WorkflowFile", "WorkflowText"]


class Guard(ImageChecks, TextChecks, ModelFileChecks, BundleChecks, WorkflowChecks):
    """Checks items against a bank under a policy.

    Args:
        bank: the protected characters.
        policy: thresholds and rules (default: the shipped default policy).
        encoder: the encoder the bank was built with (checked; default: load the bank's own).
        state: a folder for the takedown list and the audit log.

    Raises:
        BankError: the encoder is not the one the bank was built with.

    Example:
        >>> guard = Guard.open("embeddings/demo-bank.safetensors", encoder="tiny-test")
        >>> guard.check_prompt("ultraman fighting a kaiju").action
        <Action.BLOCK: 'block'>
    """

    def __init__(self, bank: Bank, policy: Policy | None = None, encoder: Encoder | None = None,
                 state: str | os.PathLike | None = None):
        self.bank = bank
        self.policy = policy or Policy.load()
        # The encoder is loaded when first needed: scanning model files never needs it.
        self._encoder = encoder
        if encoder is not None:
            bank.require_encoder(encoder.name)
        self.state = state
        self.audit = AuditLog(state) if state is not None else None
        self.takedowns = TakedownList(state, self.audit) if state is not None else None
        self._takedown_matcher = TakedownMatcher(self.takedowns) if self.takedowns is not None else None
        self.versions = {
            "guard": __version__,
            "bank": bank.digest,
            "policy": self.policy.digest,
            "encoder": encoder_label(bank.encoder),
        }
        self._encoder_options: dict[str, Any] = {}
        self._model_cache = ModelVerdictCache()
        self._text_cache = LRU(8192)  # workflow texts' findings; emptied when the bank changes
        self._index_bank()

    def _index_bank(self) -> None:
        """Derive the search structures from the bank (again after it changes). The embedding
        indexes are built when first searched: a model-file scan never needs them (nor torch)."""
        bank = self.bank
        self._text_cache.clear()  # the bank decides what texts and model files hold
        self._model_cache.clear()
        self._characters: list[Character] = bank.characters
        self._text = TextMatcher.from_bank(bank, benign=list(self.policy.text.benign), fuzzy=self.policy.text.fuzzy)
        # Prompts are embedded only against a bank with name embeddings, and only if the
        # policy ever asks for it (then the encoder must load: configuration, not a verdict).
        self._embeds_prompts = bank.has_text_embeddings and self.policy.wants_clip_text(Action.ALLOW)
        self.__dict__.pop("_image_search", None)
        self.__dict__.pop("_text_search", None)
        self.versions["bank"] = bank.digest

    @functools.cached_property
    def _image_search(self):
        from guard.match.embedding import EmbeddingIndex

        emb, owner, ref = self.bank.image_matrix()
        return EmbeddingIndex(emb, owner, device=_device(self.encoder)), ref

    @functools.cached_property
    def _text_search(self):
        from guard.match.embedding import EmbeddingIndex

        emb, owner = self.bank.text_matrix()
        return EmbeddingIndex(emb, owner, device=_device(self.encoder)), [t for c in self._characters for t in self.bank.entry(c.id).texts]

    def reopen_state(self) -> None:
        """Open new connections to the state folder: a process forked from this one must not
        use its parent's SQLite connections."""
        if self.state is not None:
            self.audit = AuditLog(self.state)
            self.takedowns = TakedownList(self.state, self.audit)
            self._takedown_matcher = TakedownMatcher(self.takedowns)

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = _encoder_for_bank(self.bank, self._encoder_options)
        return self._encoder

    @property
    def encoder_meaningful(self) -> bool:
        """Whether the bank's encoder has semantics (the tiny test encoder has none); known
        without loading it."""
        return meaningful(self.bank.encoder)

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
        rules = Policy.load(policy)
        rules.check_characters(loaded)
        guard = cls(loaded, rules, None, state)
        guard._encoder_options = {"spec": spec or loaded.encoder, **encoder_options}
        return guard

    # Decisions an adapter reaches (it acts; the verdicts are made and recorded here) ----------
    def refuse(self, subject: str, surface: Surface | str, reason: str, account: str | None = None) -> Verdict:
        """The recorded verdict for something an adapter cannot hand over for checking (a
        pipeline folder without weight files, say): a ``format`` finding with ``reason``."""
        return self._finish(self.format_verdict(subject, Surface(surface), reason), account)

    def check_latent_output(self, account: str | None = None) -> Verdict:
        """The recorded verdict for a generation that returns latents, which cannot be checked:
        blocked unless the policy's ``[generation] latent_output = "pass"``."""
        if self.policy.generation.latent_output == "refuse":
            verdict = self.format_verdict("latents", Surface.GENERATED_IMAGE,
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

    def format_verdict(self, subject: str, surface: Surface, reason: str, **evidence: Any) -> Verdict:
        """The (unrecorded) verdict for an input that could not be read or understood: a
        ``format`` finding with the policy's ``[signals.format]`` action."""
        return Verdict(subject, surface, (self._format_finding(reason, surface, **evidence),))

    # Takedowns and enrolment ----------------------------------------------------------------
    def take_down(self, item: str | os.PathLike, notice: str, character: str | None = None,
                  reason: str | None = None, *, confine: Sequence[Path] | None = None,
                  operator: str | None = None) -> list:
        """Put an item on the takedown list so it stays down; returns the entries made.

        A model file keeps its hashes and LoRA fingerprint; an image its SHA-256 and PDQ hash;
        a publication bundle (folder or JSON manifest) all of its model file and images.
        ``confine``: folders every file read must lie below (`PathNotAllowed` otherwise).
        """
        if self.takedowns is None:
            raise ConfigError("no state folder: pass --state DIR (or GUARD_STATE) to keep a takedown list")
        if character is not None:
            self.bank.character(character)  # a typo in the character id is an error, not a silent entry
        path = confined(Path(item), confine)
        entry = functools.partial(self.takedowns.add, notice, character=character, reason=reason, operator=operator)
        if is_bundle(path):
            parts = read_bundle(path, confine)
            made = []
            for part in [parts.model] + parts.images if parts.model else parts.images:
                made += self.take_down(part, notice, character, reason, confine=confine, operator=operator)
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

    def enroll(self, character: str, refs: str | os.PathLike, holder: str | None = None,
               accounts: Sequence[str] = (), names: Mapping[str, str] | None = None,
               operator: str | None = None) -> Character:
        """Enroll or update a character from a rights holder's notice; only new images are
        encoded. With a state folder the notice is a row of the audit chain."""
        from guard.bank.build import enroll  # torch: only enrolment encodes

        char = enroll(self.bank, character, Path(refs), self.encoder, holder, accounts, names)
        self._index_bank()
        if self.audit is not None:
            self.audit.record_event("notice_add", char.id, operator, {
                "character": char.id, "holder": char.holder, "references": len(char.references),
                "authorized_accounts": sorted(char.authorized_accounts), "bank": self.bank.digest})
        return char

    # Shared -----------------------------------------------------------------------------------
    def _decide(self, signal: Signal, score: float, surface: Surface, char: Character,
                account: str | None, evidence: Mapping[str, Any]) -> Finding | None:
        decision = self.policy.decide(signal, score, surface, encoder=self.bank.encoder,
                                      character=char.id, bank_thresholds=char.thresholds)
        if decision is None:
            return None
        decision = self.policy.for_account(decision, account, self.authorized(char.id))
        if decision.would_be is not None:
            evidence = {**evidence, "authorized_account": account, "would_be": decision.would_be.value}
        return Finding(char.id, signal, score, decision.threshold, decision.action, dict(evidence))

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
        strikes = self.policy.strikes
        if strikes.enabled and account and self.audit is not None and verdict.action is Action.BLOCK:
            count = self.audit.blocked_since(account, strikes.window_days) + 1
            verdict = dataclasses.replace(verdict, facts={**verdict.facts, "strikes": {
                "account": account, "blocked_attempts": count, "window_days": strikes.window_days,
                "level": self.policy.strike_level(count)}})
        if self.audit is not None:
            self.audit.record(verdict, account)
        return verdict

    def _format_finding(self, reason: str, surface: Surface, **evidence: Any) -> Finding:
        return Finding("unreadable", Signal.FORMAT, 1.0, None, self.policy.rule(Signal.FORMAT, surface),
                       {"reason": reason, **evidence})



def _device(encoder) -> str | None:
    """The encoder's device: the index searches where the queries are made (a GPU: fp16)."""
    device = getattr(encoder, "device", None)
    return None if device is None else str(device)


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
