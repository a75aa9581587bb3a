"""Printing verdicts: JSONL for scripts, a table for people, a progress bar on terminals."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from guard.verdict import Action, Measure, Verdict

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_FLAGGED, EXIT_BLOCKED = 0, 1, 2, 3, 4
EXIT_TAMPERED = 5  # guard audit verify: the chain does not verify
PROGRESS_FROM = 8  # items; fewer finish before a bar would help
_STYLE = {Action.ALLOW: "green", Action.FLAG: "yellow", Action.BLOCK: "bold red"}

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 reference``, ``3 references``."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line (time in UTC, level, logger, message), for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if fmt == "json" else
                         logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))


def exit_code(verdicts: Iterable[Verdict]) -> int:
    """0 all allowed, 3 something flagged, 4 something blocked, 1 the guard itself failed."""
    verdicts = list(verdicts)
    if any(v.error for v in verdicts):
        return EXIT_FAILED
    strongest = Action.strongest(v.action for v in verdicts)
    return {Action.ALLOW: EXIT_OK, Action.FLAG: EXIT_FLAGGED, Action.BLOCK: EXIT_BLOCKED}[strongest]


def emit_jsonl(verdicts: Iterable[Verdict]) -> None:
    for verdict in verdicts:
        sys.stdout.write(verdict.to_json() + "\n")
    sys.stdout.flush()


def summarise(finding) -> str:
    ev = finding.evidence
    detail = ev.get("reference") or ev.get("alias") or ev.get("reason") or ", ".join(ev.get("keywords", [])) \
        or ev.get("notice") or ""
    if ev.get("key") and finding.signal.value in ("metadata", "keywords"):
        detail += f" (in {ev['key']}" + (f", {ev['count']} images" if "count" in ev else "") + ")"
    if "authorized_account" in ev:
        detail += f" (authorized: {ev['authorized_account']})"
    return f"{finding.subject} {finding.signal.value} {compared(finding)} {finding.action.value} {detail}".strip()


def compared(finding) -> str:
    """The score against the threshold the policy compared it with, in the signal's own
    measure: ``0.912≥0.88`` (similarity), ``share 0.250≥0.20``, ``8≤31 bits`` (distance), or
    the score alone where a rule's fixed action decided."""
    measure = finding.signal.measure
    if measure is Measure.DISTANCE:
        bits = f"{finding.score:.0f}"
        return f"{bits} bits" if finding.threshold is None else f"{bits}≤{finding.threshold:.0f} bits"
    score = f"share {finding.score:.3f}" if measure is Measure.SHARE else f"{finding.score:.3f}"
    if measure is Measure.EXACT:
        return "exact"
    return score if finding.threshold is None else f"{score}≥{finding.threshold:.2f}"


def short_names(verdicts: Sequence[Verdict], title: str | None) -> tuple[str | None, list[str]]:
    """(title, item names): files of one folder are named relative to it and the folder goes
    in the title, so a narrow table folds findings, not every file name."""
    subjects = [v.subject for v in verdicts]
    if len(subjects) < 2 or not all(os.path.isfile(s) for s in subjects):
        return title, subjects
    folder = os.path.commonpath([os.path.abspath(s) for s in subjects])
    names = [os.path.relpath(os.path.abspath(s), folder) for s in subjects]
    relative = os.path.relpath(folder)
    return f"{title or 'items'} in {folder if relative.startswith('..') else relative}", names


def _item_column(table: Table, header: str, names: Sequence[str]) -> None:
    """Names kept whole where the terminal allows (up to half its width): a name folded
    mid-word at 80 columns is hard to copy."""
    longest = max((len(n) for n in names), default=len(header))
    table.add_column(header, overflow="fold", min_width=min(longest, max(12, out.width // 2)))


def print_table(verdicts: Sequence[Verdict], title: str | None = None) -> None:
    title, names = short_names(verdicts, title)
    table = Table(title=title, show_lines=False)
    _item_column(table, "item", names)
    table.add_column("action")
    table.add_column("findings", overflow="fold")
    for v, name in zip(verdicts, names):
        findings = "\n".join(summarise(f) for f in v.findings) or "-"
        if v.error:
            findings = f"guard error: {v.error}\n{findings}".rstrip("-\n")
        table.add_row(name, f"[{_STYLE[v.action]}]{v.action.value}[/]", findings)
    out.print(table)
    counts = {a: sum(v.action is a for v in verdicts) for a in Action}
    out.print(" · ".join(f"{counts[a]} {a.value}" for a in Action))


def print_publication(verdict: Verdict) -> None:
    """A publication's verdict with the parts that decided it (the cover, the model file, ...)."""
    table = Table(title="publication")
    _item_column(table, "item", [verdict.subject])
    table.add_column("action")
    table.add_column("decided by", overflow="fold")
    table.add_column("findings", overflow="fold")
    findings = "\n".join(f"[{f.evidence.get('part', '-')}] {summarise(f)}" for f in verdict.findings) or "-"
    if verdict.error:
        findings = f"guard error: {verdict.error}\n{findings}".rstrip("-\n")
    table.add_row(verdict.subject, f"[{_STYLE[verdict.action]}]{verdict.action.value}[/]",
                  ", ".join(verdict.facts.get("decided_by") or []) or "-", findings)
    out.print(table)


def print_takedowns(entries) -> None:
    if not entries:
        out.print("the takedown list is empty", highlight=False)
        return
    table = Table(title="takedown list")
    for column in ("id", "notice", "character", "since (UTC)", "kept"):
        table.add_column(column, overflow="fold")
    names = [os.path.relpath(e.subject) if os.path.isabs(e.subject) and not os.path.relpath(e.subject).startswith("..")
             else e.subject for e in entries]
    _item_column(table, "item", names)
    for e, name in zip(entries, names):
        kept = "PDQ" if e.pdq else "hashes" + (f", {count(len(e.fingerprint.layers), 'layer')}" if e.fingerprint else "")
        table.add_row(str(e.id), e.notice, e.character or "-", e.created[:16].replace("T", " "), kept, name)
    out.print(table)
    out.print(count(len(entries), "entry", "entries") + f" under {count(len({e.notice for e in entries}), 'notice')}",
              highlight=False)


def print_scan_summary(verdicts: Sequence[Verdict], title: str = "items needing action") -> None:
    """Flagged and blocked items, then counts by action and by character or notice."""
    noteworthy = [v for v in verdicts if v.action is not Action.ALLOW or v.error]
    if noteworthy:
        title, names = short_names(noteworthy, title)
        table = Table(title=title)
        _item_column(table, "item", names)
        for column in ("action", "kind", "findings"):
            table.add_column(column, overflow="fold")
        for v, name in zip(noteworthy, names):
            fmt = _kind(v)
            findings = "\n".join(summarise(f) for f in v.findings[:6]) or (f"guard error: {v.error}" if v.error else "-")
            table.add_row(name, f"[{_STYLE[v.action]}]{v.action.value}[/]", fmt, findings)
        out.print(table)
    by_subject: dict[str, int] = {}
    for v in verdicts:
        for subject in {f.subject for f in v.findings if f.action is not Action.ALLOW}:
            by_subject[subject] = by_subject.get(subject, 0) + 1
    counts = {a: sum(v.action is a for v in verdicts) for a in Action}
    noun = "file" if all(v.surface.value == "model_file" for v in verdicts) else "item"
    out.print(f"{count(len(verdicts), noun)}: " + " · ".join(f"{counts[a]} {a.value}" for a in Action))
    if by_subject:
        out.print("by character / rule: " + ", ".join(f"{k} {n}" for k, n in sorted(by_subject.items(),
                                                                                   key=lambda kv: -kv[1])))


def _kind(v: Verdict) -> str:
    """What an item is, as far as the guard read it: ``lora / sdxl`` for a model file, the
    surface otherwise (never ``? / ?``)."""
    if v.surface.value != "model_file":
        return v.surface.value.replace("_", " ")
    parts = [p for p in (v.facts.get("format"), v.facts.get("base_model")) if p]
    return " / ".join(parts) or "model file (not read)"


@contextmanager
def progress(total: int, label: str) -> Iterator:
    """A progress bar on stderr when it is a terminal and the job is long enough."""
    if total < PROGRESS_FROM or not err.is_terminal:
        yield lambda n: None
        return
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
