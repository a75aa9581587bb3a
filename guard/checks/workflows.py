"""Checking a generation request given as a node graph (a ComfyUI workflow): its texts and
the model files it names, as one recorded verdict.

Model-file verdicts are cached by file identity (device, inode, size, modification time),
the account and the takedown list's generation, so a popular LoRA is hashed once per
process, and a takedown added since is still seen.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from typing import TYPE_CHECKING, Any, Sequence

from guard.verdict import Action, Finding, Surface, Verdict

if TYPE_CHECKING:
    from guard.facade import Guard


@dataclasses.dataclass(frozen=True)
class WorkflowText:
    part: str  # where it sits, e.g. "node 6 (CLIPTextEncode) text"
    text: str
    negative: bool = False  # feeds only negative conditioning: a mitigation, never a finding


@dataclasses.dataclass(frozen=True)
class WorkflowFile:
    part: str
    path: str


class LRU:
    """A bounded, thread-safe map; least recently used entries dropped first."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._lock = threading.Lock()
        self._items: collections.OrderedDict = collections.OrderedDict()

    def get(self, key):
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class ModelVerdictCache(LRU):
    """Unrecorded model-file verdicts by file identity."""

    def key(self, guard: "Guard", path: str, account: str | None):
        st = os.stat(path)
        generation = None
        if guard.takedowns is not None:
            guard.takedowns.entries()  # re-reads the rows (and generation) when another process wrote
            generation = guard.takedowns.generation
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, account, generation

    def put(self, key, verdict: Verdict) -> None:
        if not verdict.error:  # a failure is not remembered: the next request tries again
            super().put(key, verdict)


class WorkflowChecks:
    """`Guard.check_workflow` (a part of `Guard`)."""

    def check_workflow(self, subject: str, texts: Sequence[WorkflowText], files: Sequence[WorkflowFile],
                       account: str | None = None, record: bool = True) -> Verdict:
        """One verdict for a whole generation request: every text (negative ones are listed,
        not screened: names there are a mitigation) and every model file it names, each
        finding marked with its ``part``. Recorded once."""
        [verdict] = self._checked(lambda: [self._workflow(subject, texts, files, account)],
                                  lambda error: [self._error(subject, Surface.WORKFLOW, error)], account, record)
        return verdict

    def check_model_file_cached(self, path: str, account: str | None = None) -> Verdict:
        """`check_model_file`, unrecorded, remembered by file identity (see `ModelVerdictCache`)."""
        try:
            key = self._model_cache.key(self, path, account)
        except OSError:
            key = None
        found = self._model_cache.get(key) if key is not None else None
        if found is None:
            found = self.check_model_file(path, account=account, record=False)
            if key is not None:
                self._model_cache.put(key, found)
        return found

    def _texts_findings(self, texts: Sequence[str], account: str | None) -> list[list[Finding]]:
        """Prompt findings of each text (as `check_prompt` finds them, without steering: a
        graph's negative prompt is not the guard's to edit), remembered per text and account,
        with one encoder forward for all texts not seen before."""
        cache = self._text_cache
        keys = [(text, account) for text in texts]
        found: dict[tuple, list[Finding]] = {k: cache.get(k) for k in dict.fromkeys(keys) if cache.get(k) is not None}
        fresh = [k for k in dict.fromkeys(keys) if k not in found]
        limit = self.policy.text.max_prompt_chars
        # A text over the policy's length is not screened (its cost grows with it): a format
        # finding, so that a megabyte in some node's string input cannot tie the server up.
        names = {k: [self.too_long_finding(k[0])] for k in fresh if len(k[0]) > limit}
        fresh = [k for k in fresh if k not in names]
        names.update({k: self.text_findings(k[0], Surface.PROMPT, account) for k in fresh})
        embed = [k for k in fresh if self.policy.wants_clip_text(Action.strongest(f.action for f in names[k]))]
        for k, extra in zip(embed, self._clip_text_findings_many([k[0] for k in embed], Surface.PROMPT, account)):
            names[k] = names[k] + extra
        for k, value in names.items():
            cache.put(k, value)
            found[k] = value
        return [found[k] for k in keys]

    def _workflow(self, subject: str, texts: Sequence[WorkflowText], files: Sequence[WorkflowFile],
                  account: str | None) -> Verdict:
        findings: list[Finding] = []
        errors = []
        screened = [t for t in texts if not t.negative and t.text.strip()]
        for item, found in zip(screened, self._texts_findings([t.text for t in screened], account)):
            findings += _part(found, item.part)
        models = {}
        for item in files:
            verdict = self.check_model_file_cached(item.path, account)
            findings += _part(verdict.findings, item.part)
            models[item.part] = {"path": item.path, "action": verdict.action.value,
                                 "sha256": verdict.facts.get("sha256")}
            if verdict.error:
                errors.append(f"{item.part}: {verdict.error}")
        strongest = Action.strongest(f.action for f in findings)
        facts: dict[str, Any] = {
            "texts": len([t for t in texts if not t.negative]), "negative_texts": [t.part for t in texts if t.negative],
            "model_files": models,
            "decided_by": sorted({f.evidence["part"] for f in findings if f.action is strongest})
            if strongest is not Action.ALLOW else []}
        return Verdict(subject, Surface.WORKFLOW, tuple(findings), facts=facts, error="; ".join(errors) or None,
                       error_action=self.policy.error_action)


def _part(findings, part: str) -> list[Finding]:
    return [dataclasses.replace(f, evidence={**f.evidence, "part": part}) for f in findings]
