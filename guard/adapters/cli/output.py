"""Printing verdicts: JSONL for scripts, a table for people, a progress bar on terminals."""

from __future__ import annotations

import os
import sys
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


def print_table(verdicts: Sequence[Verdict], title: str | None = None) -> None:
    title, names = short_names(verdicts, title)
    table = Table(title=title, show_lines=False)
    table.add_column("item", overflow="fold")
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


def print_scan_summary(verdicts: Sequence[Verdict]) -> None:
    """Flagged and blocked files, then counts by action and by character or notice."""
    noteworthy = [v for v in verdicts if v.action is not Action.ALLOW or v.error]
    if noteworthy:
        title, names = short_names(noteworthy, "model files needing action")
        table = Table(title=title)
        for column in ("file", "action", "format", "findings"):
            table.add_column(column, overflow="fold")
        for v, name in zip(noteworthy, names):
            fmt = f"{v.facts.get('format', '?')} / {v.facts.get('base_model') or '?'}"
            findings = "\n".join(summarise(f) for f in v.findings[:6]) or (f"guard error: {v.error}" if v.error else "-")
            table.add_row(name, f"[{_STYLE[v.action]}]{v.action.value}[/]", fmt, findings)
        out.print(table)
    by_subject: dict[str, int] = {}
    for v in verdicts:
        for subject in {f.subject for f in v.findings if f.action is not Action.ALLOW}:
            by_subject[subject] = by_subject.get(subject, 0) + 1
    counts = {a: sum(v.action is a for v in verdicts) for a in Action}
    noun = "file" if len(verdicts) == 1 else "files"
    out.print(f"{len(verdicts)} {noun}: " + " · ".join(f"{counts[a]} {a.value}" for a in Action))
    if by_subject:
        out.print("by character / rule: " + ", ".join(f"{k} {n}" for k, n in sorted(by_subject.items(),
                                                                                   key=lambda kv: -kv[1])))


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
