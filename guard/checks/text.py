"""Text: prompts, and the titles, tags, captions and metadata every other surface holds,
against the bank's names (aliases, keywords) and, with a real encoder, their embeddings."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from typing import Any, Mapping, Sequence

from guard.extract.text import fold
from guard.verdict import Action, Finding, Signal, Surface, Verdict

#: The evidence note on text similarities of an encoder that means nothing semantically.
NOT_MEANINGFUL = "tiny test encoder: this similarity has no semantic meaning"


class TextChecks:
    """`Guard.check_prompt`, `Guard.text_findings` and the rest of text (a part of `Guard`)."""

    def check_prompt(self, text: str, negative: str | None = None, account: str | None = None,
                     subject: str | None = None) -> Verdict:
        """Screen a prompt before any GPU work.

        Names in the ``negative`` prompt are a mitigation, never a finding. Under a policy with
        ``[text] steer = true``, a prompt that would only be flagged is allowed instead, and
        the verdict's ``steer`` holds the names and keywords to append to its negative prompt.
        """
        return self.check_prompts([text], [negative], [account], [subject])[0]

    def check_prompts(self, texts: Sequence[str], negatives: Sequence[str | None] | None = None,
                      accounts: Sequence[str | None] | None = None,
                      subjects: Sequence[str | None] | None = None) -> list[Verdict]:
        """`check_prompt` for several prompts (of several accounts) at once, each recorded with
        its own account: all the windows the CLIP text stage embeds go through one encoder
        forward (a server batching concurrent requests, a file of prompts). When the guard fails
        on a batch, each prompt is screened alone, so only the one that trips it fails closed."""
        n = len(texts)
        negatives = list(negatives) if negatives is not None else [None] * n
        accounts = list(accounts) if accounts is not None else [None] * n
        subjects = list(subjects) if subjects is not None else [None] * n
        if not len(negatives) == len(accounts) == len(subjects) == n:
            raise ValueError("texts, negatives, accounts and subjects must be as many")
        for text, negative in zip(texts, negatives):
            if not isinstance(text, str):
                raise TypeError(f"text must be a str, got {type(text).__name__}")
            if negative is not None and not isinstance(negative, str):
                raise TypeError(f"negative must be a str or None, got {type(negative).__name__}")
        limit = self.policy.text.max_prompt_chars
        out: list[Verdict | None] = [None] * n
        todo = []
        for i, text in enumerate(texts):
            if len(text) > limit:  # before any work: its cost grows with the length
                out[i] = self._finish(self._too_long(text, subjects[i], limit), accounts[i])
            else:
                todo.append(i)
        if not todo:
            return out
        if self._embeds_prompts:
            self.encoder  # noqa: B018 (loading it is configuration: a ConfigError, not a verdict)
        names = {i: subjects[i] if subjects[i] is not None else texts[i] for i in todo}

        def screen(items: list[int]) -> list[Verdict]:
            return self._checked(
                lambda: self._prompts([texts[i] for i in items], [negatives[i] for i in items],
                                      [accounts[i] for i in items], [names[i] for i in items]),
                lambda error: [self._error(names[i], Surface.PROMPT, error) for i in items], None, record=False)

        verdicts = screen(todo)
        if len(todo) > 1 and any(v.error for v in verdicts):
            # One prompt that trips the guard must not fail its batch-mates closed (another
            # account's requests, batched by the service): each is screened alone again.
            verdicts = [screen([i])[0] for i in todo]
        for i, verdict in zip(todo, verdicts):
            out[i] = self._finish(verdict, accounts[i])
        return out

    def _too_long(self, text: str, subject: str | None, limit: int) -> Verdict:
        name = subject if subject is not None else f"{text[:80]}… ({len(text):,} characters)"
        return Verdict(name, Surface.PROMPT, (self.too_long_finding(text),))

    def too_long_finding(self, text: str) -> Finding:
        """The format finding for a text over the policy's ``[text] max_prompt_chars``: not
        screened, since screening costs grow with the length (a prompt, a workflow's input)."""
        limit = self.policy.text.max_prompt_chars
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return self._format_finding(f"text of {len(text):,} characters is longer than the policy's [text] "
                                    f"max_prompt_chars = {limit:,}: not screened", Surface.PROMPT,
                                    characters=len(text), prompt_sha256=digest)

    def _prompts(self, texts: Sequence[str], negatives: Sequence[str | None], accounts: Sequence[str | None],
                 names: Sequence[str]) -> list[Verdict]:
        found = [self.text_findings(text, Surface.PROMPT, account) for text, account in zip(texts, accounts)]
        embed = [i for i, f in enumerate(found) if self.policy.wants_clip_text(Action.strongest(x.action for x in f))]
        extra = self._clip_text_findings_many([texts[i] for i in embed], Surface.PROMPT, [accounts[i] for i in embed])
        for i, more in zip(embed, extra):
            found[i] = found[i] + more
        verdicts = []
        for findings, negative, name in zip(found, negatives, names):
            verdict = Verdict(name, Surface.PROMPT, tuple(findings))
            if self.policy.text.steer and verdict.action is Action.FLAG:
                verdict = self._steered(verdict, negative)
            verdicts.append(verdict)
        return verdicts

    def unscreened_prompt(self, reason: str, account: str | None = None) -> Verdict:
        """The (recorded) verdict for a generation whose prompt text was not available, e.g.
        a caller passing ``prompt_embeds``: as the policy's ``[generation] unscreened_prompt``
        says, allowed and saying so, or blocked."""
        subject = "<prompt text not available>"
        if self.policy.generation.unscreened_prompt == "block":
            verdict = self.format_verdict(subject, Surface.PROMPT, f"{reason} (policy: block unscreened prompts)")
            verdict = dataclasses.replace(verdict, facts={"screened": False})
        else:
            verdict = Verdict(subject, Surface.PROMPT, facts={"screened": False, "reason": reason})
        return self._finish(verdict, account)

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
            if hit.kind == "alias":
                signal, score = alias_signal, self.policy.alias_score(hit.evidence.get("edit_distance", 0))
            else:
                signal = Signal.KEYWORDS
                score = self.policy.keyword_score(len(hit.evidence["keywords"]), len(hit.evidence["set"]))
            finding = self._decide(signal, score, surface, self.bank.character(hit.character), account,
                                   {**hit.evidence, **(where or {})})
            if finding is not None:
                findings.append(finding)
        return findings

    def _clip_text_findings_many(self, texts: Sequence[str], surface: Surface,
                                 account: str | None | Sequence[str | None]) -> list[list[Finding]]:
        """`_clip_text_findings` of several texts with one encoder forward for all of them
        (``account``: one for all, or one per text)."""
        out: list[list[Finding]] = [[] for _ in texts]
        accounts = [account] * len(texts) if account is None or isinstance(account, str) else list(account)
        if not self._embeds_prompts:
            return out
        windows, spans = [], []
        for text in texts:
            start = len(windows)
            if text.strip():
                windows += _windows(text, self.policy.text.window_words, self.policy.text.window_stride)
            spans.append((start, len(windows)))
        if not windows:
            return out
        index, names = self._text_search
        matches = index.search(self.encoder.encode_texts(windows), self._floor(Signal.CLIP_TEXT, surface))
        for i, (start, end) in enumerate(spans):
            best: dict[int, tuple[float, int, int]] = {}
            for w in range(start, end):
                for m in matches[w]:
                    if m.score > best.get(m.owner, (-2.0,))[0]:
                        best[m.owner] = (m.score, w, m.exemplar)
            for owner, (score, w, row) in sorted(best.items(), key=lambda kv: -kv[1][0]):
                evidence = {"window": windows[w], "name": names[row]}
                if not self.encoder.meaningful:
                    evidence["note"] = NOT_MEANINGFUL
                finding = self._decide(Signal.CLIP_TEXT, min(score, 1.0), surface, self._characters[owner],
                                       accounts[i], evidence)
                if finding is not None:
                    out[i].append(finding)
            out[i] = out[i][: self.policy.top_k]
        return out

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


def _windows(text: str, size: int, stride: int) -> list[str]:
    """The whole text, and overlapping word windows of it when it is long (a name diluted in
    a 70-token prompt weighs little in the whole prompt's embedding)."""
    words = text.split()
    windows = [text]
    if len(words) > size:
        windows += [" ".join(words[i:i + size]) for i in range(0, len(words) - size + stride, stride)]
    return windows
