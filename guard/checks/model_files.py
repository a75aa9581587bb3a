"""Model files: LoRAs, Checkpoints, embeddings, against the format rules, the bank's names in
their training metadata, and the takedown list."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from guard.extract.model_file import ModelReport, inspect_model
from guard.extract.training_metadata import metadata_limits, metadata_texts
from guard.verdict import Finding, Signal, Surface, Verdict

#: At most this many of a pickle's refused imports become findings (the facts list them all).
PICKLE_FINDINGS = 20


class ModelFileChecks:
    """`Guard.check_model_file` and what it is made of (a part of `Guard`)."""

    def check_model_file(self, path: str | os.PathLike, *, account: str | None = None,
                         trigger_words: Sequence[str] = (), metadata_only: bool = False,
                         subject: str | None = None, record: bool = True) -> Verdict:
        """Gate a LoRA / Checkpoint / embedding file before it is loaded or published.

        Args:
            path: the file (never unpickled; safetensors headers are read with bounds).
            account: the uploader; authorized accounts are allowed for their characters.
            trigger_words: words the uploader declared (e.g. from the upload form).
            metadata_only: read the safetensors header only (no hashes, no fingerprint,
                so no takedown matching).
            record: write the verdict to the audit log (off for the model of a publication,
                which is recorded whole).

        The verdict's ``facts`` carry the format, base model family, hashes and, for pickle
        files, the globals the file would import.
        """
        name = subject or os.fspath(path)
        [verdict] = self._checked(lambda: [self._model_file(path, account, trigger_words, metadata_only, name)],
                                  lambda error: [self._error(name, Surface.MODEL_FILE, error)], account, record)
        return verdict

    def _model_file(self, path: str | os.PathLike, account: str | None, trigger_words: Sequence[str],
                    metadata_only: bool, subject: str) -> Verdict:
        report = inspect_model(path, metadata_only=metadata_only, blake3=self.policy.model.blake3)
        findings = [self._format_finding(reason, Surface.MODEL_FILE) for reason in report.problems]
        facts = report.facts()
        if report.pickle is not None:
            facts["pickle_globals"] = [f"{m}.{n}" for m, n in sorted(report.pickle.globals)]
            action = self.policy.rule(Signal.PICKLE, Surface.MODEL_FILE)
            findings += [Finding("unsafe-pickle", Signal.PICKLE, 1.0, None, action, {"reason": reason})
                         for reason in report.pickle.unsafe[:PICKLE_FINDINGS]]
        limits = metadata_limits(report.metadata)
        findings += [self._format_finding(reason, Surface.MODEL_FILE) for reason in limits]
        # Metadata too large to screen whole is refused above, not screened in part.
        findings += self._metadata_findings({} if limits else report.metadata, trigger_words, account)
        findings += self._hash_mismatch(report)
        findings += self._takedown_findings(report)
        return Verdict(subject, Surface.MODEL_FILE, tuple(findings), facts=facts)

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

    def _hash_mismatch(self, report: ModelReport) -> list[Finding]:
        embedded = str(report.metadata.get("sshs_model_hash") or "").strip().lower()
        computed = report.hashes.tensor_sha256 if report.hashes else None
        if not embedded or not computed or embedded == computed:
            return []
        return [Finding("sshs_model_hash", Signal.METADATA, 1.0, None, self.policy.hash_mismatch,
                        {"key": "sshs_model_hash", "embedded": embedded, "computed": computed,
                         "reason": "the tensor data changed after the hash was written"})]

    def _takedown_findings(self, report: ModelReport) -> list[Finding]:
        if self._takedown_matcher is None or report.hashes is None:
            return []
        index = self._takedown_matcher.index()
        findings = []
        for kind, entry in index.by_hash(report.hashes.sha256, report.hashes.tensor_sha256):
            signal = Signal.FILE_HASH if kind == "file_hash" else Signal.TENSOR_HASH
            findings.append(self._takedown_decided(signal, 1.0, entry))
        if report.fingerprint is not None and not findings:
            floor = self.policy.lowest_threshold(Signal.FINGERPRINT, Surface.MODEL_FILE, self.bank.encoder)
            matches = index.by_fingerprint(report.fingerprint, floor, self.policy.model.substantial_share)
            for match, entry in matches[: self.policy.top_k]:
                evidence = {"layers_compared": match.shared, "agreement": round(match.agreement, 4),
                            "coverage": round(match.coverage, 4), "chance": round(match.chance, 4),
                            "layers_not_in_takedown": len(report.fingerprint.layers) - match.shared}
                findings.append(self._takedown_decided(Signal.FINGERPRINT, match.score, entry, evidence))
        return [f for f in findings if f is not None]

    def _takedown_decided(self, signal: Signal, score: float, entry,
                          evidence: Mapping[str, Any] | None = None) -> Finding | None:
        decision = self.policy.decide(signal, score, Surface.MODEL_FILE, encoder=self.bank.encoder,
                                      character=entry.character)
        return None if decision is None else self._takedown_finding(signal, score, entry, decision, evidence)

    def _takedown_finding(self, signal: Signal, score: float, entry, decision,
                          evidence: Mapping[str, Any] | None = None) -> Finding:
        return Finding(f"takedown:{entry.notice}", signal, score, decision.threshold, decision.action,
                       {"notice": entry.notice, "character": entry.character, "takedown_id": entry.id,
                        "taken_down": entry.created, **(evidence or {})})
