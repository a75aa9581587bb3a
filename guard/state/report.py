"""The duty-of-care report: what the guard checked and decided over a period.

Built from the audit log (and the takedown list): counts by surface, action and character,
takedowns and re-upload blocks, and the bank, policy and encoder versions in force. Rendered
as JSON, and as one self-contained HTML page whose bar charts are inline SVG (no scripts,
nothing fetched).
"""

from __future__ import annotations

import html
import json
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from guard.state.audit import AuditLog
from guard.state.takedowns import TakedownList

_REUPLOAD_SIGNALS = {"file_hash", "tensor_hash", "fingerprint", "pdq"}


def build_report(audit: AuditLog, takedowns: TakedownList | None = None, since: str | None = None,
                 until: str | None = None) -> dict[str, Any]:
    by_surface, by_action, by_character, by_surface_action = Counter(), Counter(), Counter(), Counter()
    reupload_blocks, authorized = 0, 0
    versions: dict[tuple, dict[str, Any]] = {}
    total = 0
    for row in audit.rows(since, until):
        total += 1
        verdict = json.loads(row["verdict"])
        by_surface[row["surface"]] += 1
        by_action[row["action"]] += 1
        by_surface_action[f"{row['surface']}/{row['action']}"] += 1
        for subject in {f["subject"] for f in verdict.get("findings", []) if f.get("action") != "allow"}:
            by_character[subject] += 1
        findings = verdict.get("findings", [])
        if row["action"] == "block" and any(f.get("signal") in _REUPLOAD_SIGNALS for f in findings):
            reupload_blocks += 1
        authorized += any("authorized_account" in f.get("evidence", {}) for f in findings)
        v = verdict.get("versions", {})
        key = (v.get("guard"), v.get("bank"), v.get("policy"), v.get("encoder"))
        span = versions.setdefault(key, {"guard": key[0], "bank": key[1], "policy": key[2], "encoder": key[3],
                                         "first_seen": row["time"], "verdicts": 0})
        span["last_seen"] = row["time"]
        span["verdicts"] += 1
    taken_down = [t for t in (takedowns.entries() if takedowns else [])
                  if (not since or t.created >= since) and (not until or t.created < until)]
    integrity = audit.verify()
    return {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "period": {"since": since, "until": until},
        "verdicts": total,
        "by_surface": dict(by_surface.most_common()),
        "by_action": {a: by_action.get(a, 0) for a in ("allow", "flag", "block")},
        "by_surface_and_action": dict(sorted(by_surface_action.items())),
        "by_character": dict(by_character.most_common()),
        "authorized_uses": authorized,
        "takedowns": len(taken_down),
        "takedown_notices": sorted({t.notice for t in taken_down}),
        "reupload_blocks": reupload_blocks,
        "versions_in_force": list(versions.values()),
        # The head is an anchor: kept with the report, it lets a later `guard audit verify
        # --anchor` notice rows cut off the end of the log.
        "audit_log": {"rows": integrity.rows, "chain_intact": integrity.ok, "first_bad_row": integrity.bad_seq,
                      "head": audit.head()._asdict()},
    }


def _bars(title: str, counts: dict[str, int]) -> str:
    if not counts:
        return f"<h2>{html.escape(title)}</h2><p>none</p>"
    width, row, label_w = 640, 26, 200
    peak = max(counts.values()) or 1
    parts = [f'<svg role="img" aria-label="{html.escape(title)}" width="{width}" '
             f'height="{row * len(counts) + 10}">']
    for i, (name, value) in enumerate(counts.items()):
        y = i * row + 5
        bar = max(2, int((width - label_w - 60) * value / peak))
        colour = {"block": "#c0392b", "flag": "#e6a117", "allow": "#2e8b57"}.get(name.split("/")[-1], "#3b6ea8")
        parts.append(f'<text x="0" y="{y + 16}" font-size="13">{html.escape(name)}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{bar}" height="{row - 8}" fill="{colour}"/>'
                     f'<text x="{label_w + bar + 6}" y="{y + 16}" font-size="13">{value}</text>')
    parts.append("</svg>")
    return f"<h2>{html.escape(title)}</h2>" + "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    period = report["period"]
    span = f"{period['since'] or 'the beginning'} to {period['until'] or 'now'}"
    integrity = report["audit_log"]
    chain = ("intact" if integrity["chain_intact"]
             else f"BROKEN at row {integrity['first_bad_row']} (run guard audit verify)")
    versions = "".join(
        f"<tr><td>{html.escape(str(v['guard']))}</td><td><code>{html.escape(str(v['bank'])[:16])}…</code></td>"
        f"<td><code>{html.escape(str(v['policy'])[:16])}…</code></td><td>{html.escape(str(v['encoder']))}</td>"
        f"<td>{html.escape(v['first_seen'])}</td><td>{html.escape(v['last_seen'])}</td><td>{v['verdicts']}</td></tr>"
        for v in report["versions_in_force"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>diffusion-guard duty-of-care report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:960px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}.kpi{{display:inline-block;margin-right:2em}}
.kpi b{{font-size:1.6em;display:block}}</style></head><body>
<h1>Duty-of-care report</h1>
<p>Period: {html.escape(span)} · generated {html.escape(report['generated'])} · audit chain: {html.escape(chain)}
 ({integrity['rows']} rows)</p>
<div class="kpi"><b>{report['verdicts']}</b>items checked</div>
<div class="kpi"><b>{report['by_action']['block']}</b>blocked</div>
<div class="kpi"><b>{report['by_action']['flag']}</b>sent to review</div>
<div class="kpi"><b>{report['takedowns']}</b>takedowns</div>
<div class="kpi"><b>{report['reupload_blocks']}</b>re-uploads blocked</div>
{_bars("Verdicts by action", report['by_action'])}
{_bars("Verdicts by surface and action", report['by_surface_and_action'])}
{_bars("Findings by character or rule", dict(list(report['by_character'].items())[:20]))}
<h2>Bank, policy and encoder in force</h2>
<table><tr><th>guard</th><th>bank</th><th>policy</th><th>encoder</th><th>first</th><th>last</th><th>verdicts</th></tr>
{versions}</table>
</body></html>
"""
