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

from guard.state.audit import EVENT_SURFACES, AuditLog
from guard.state.periods import instant, period, stored
from guard.state.takedowns import TakedownList

_REUPLOAD_SIGNALS = {"file_hash", "tensor_hash", "fingerprint", "pdq"}


METHOD = ("Every item was checked before it was used or published: prompts by names, aliases and "
          "descriptions (normalised across scripts and spellings) and, where the policy asks, by CLIP text "
          "similarity; images by CLIP image similarity to the rights holders' reference images and by perceptual "
          "hash against taken-down images; model files by their training metadata, hashes and LoRA weight "
          "fingerprints against taken-down files, and by a scan of pickle code before anything was loaded. "
          "Thresholds and actions are those of the policy whose digest is listed; each verdict in the log "
          "names the rule, the score and the threshold that decided it. Limits: similarity is evidence, not "
          "proof; characters not in the bank are not recognised; the tool does not judge fair use or licences "
          "beyond the accounts the bank authorises.")
NOT_MEANINGFUL = ("In part of this period the guard ran with an encoder that has no semantic meaning (the tiny "
                  "test encoder): its CLIP scores meant nothing, and only names, hashes, fingerprints and "
                  "metadata were evidence.")


def build_report(audit: AuditLog, takedowns: TakedownList | None = None, since: str | None = None,
                 until: str | None = None, operator: str | None = None, bank=None) -> dict[str, Any]:
    since, until = period(since, until)
    by_surface, by_action, by_character, by_surface_action = Counter(), Counter(), Counter(), Counter()
    reupload_blocks, authorized = 0, 0
    versions: dict[tuple, dict[str, Any]] = {}
    total = 0
    events = 0
    for row in audit.rows(since, until):
        if row["surface"] in EVENT_SURFACES:
            events += 1
            continue
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
    history = takedown_history(audit, takedowns)
    in_force = [h for h in history.values() if (not until or h["added"] < until)
                and (h["removed"] is None or not since or h["removed"] >= since)]
    added = [h for h in history.values() if (not since or h["added"] >= since) and (not until or h["added"] < until)]
    changes = [{"time": e["time"], "seq": e["seq"], "event": e["action"], "operator": e["account"],
                "takedown_id": e["details"].get("takedown_id"), "notice": e["details"].get("notice"),
                "subject": e["subject"], "reason": e["details"].get("removal_reason") or e["details"].get("reason")}
               for e in audit.events(since, until) if e["surface"] == "takedown"]
    notices = [{"time": e["time"], "seq": e["seq"], "character": e["details"].get("character"),
                "holder": e["details"].get("holder"), "references": e["details"].get("references"),
                "operator": e["account"]} for e in audit.events(since, until) if e["action"] == "notice_add"]
    integrity = audit.verify()
    method = [METHOD]
    if any("no semantic meaning" in str(v.get("encoder")) for v in versions.values()):
        method.append(NOT_MEANINGFUL)
    covered = [{"character": c.id, "holder": c.holder or None, "references": len(c.references),
                "authorized_accounts": len(c.authorized_accounts)} for c in bank.characters] if bank else None
    return {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "generated_by": operator,
        "method": method,
        "characters_covered": covered,
        "human_review": "no review decisions are recorded in this log (no review console is in use)",
        "period": {"since": since, "until": until},
        "verdicts": total,
        "by_surface": dict(by_surface.most_common()),
        "by_action": {a: by_action.get(a, 0) for a in ("allow", "flag", "block")},
        "by_surface_and_action": dict(sorted(by_surface_action.items())),
        "by_character": dict(by_character.most_common()),
        "authorized_uses": authorized,
        "takedowns": len(added),
        "takedown_notices": sorted({h["notice"] for h in added}),
        "takedowns_in_force": sorted(in_force, key=lambda h: h["added"]),
        "takedown_changes": changes,
        "notices_enrolled": notices,
        "chain_events": events,
        "reupload_blocks": reupload_blocks,
        "versions_in_force": list(versions.values()),
        # The head is an anchor: kept with the report, it lets a later `guard audit verify
        # --anchor` notice rows cut off the end of the log.
        "audit_log": {"rows": integrity.rows, "chain_intact": integrity.ok, "first_bad_row": integrity.bad_seq,
                      "head": audit.head()._asdict()},
    }


def render_pdf(report: dict[str, Any], path) -> int:
    """The HTML report laid out for print (A4, numbered pages) as a PDF; returns its pages."""
    from PIL import ImageFile

    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        import weasyprint  # sets Pillow's LOAD_TRUNCATED_IMAGES for the whole process: undone below
    except (ImportError, OSError) as exc:  # OSError: the Pango libraries are missing
        from guard.errors import ConfigError

        raise ConfigError(f"PDF reports need WeasyPrint and Pango: pip install 'diffusion-guard[evidence]' "
                          f"(and the libpango-1.0-0 package) ({exc})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    document = weasyprint.HTML(string=render_html(report)).render()
    document.write_pdf(path)
    return len(document.pages)


def takedown_history(audit: AuditLog, takedowns: TakedownList | None) -> dict[int, dict[str, Any]]:
    """Every takedown the chain (and, for entries from before takedowns were chained, the
    list) knows: when it was added and removed, by whom, why."""
    history: dict[int, dict[str, Any]] = {}
    for e in audit.events():
        d = e["details"]
        if e["surface"] != "takedown" or d.get("takedown_id") is None:
            continue
        if e["action"] == "takedown_add":
            history[d["takedown_id"]] = {"takedown_id": d["takedown_id"], "notice": d.get("notice"),
                                         "subject": e["subject"], "character": d.get("character"),
                                         "reason": d.get("reason"), "added": e["time"], "added_by": e["account"],
                                         "added_row": e["seq"], "removed": None, "removed_by": None,
                                         "removal_reason": None, "removed_row": None}
        elif e["action"] == "takedown_remove" and d["takedown_id"] in history:
            history[d["takedown_id"]].update(removed=e["time"], removed_by=e["account"], removed_row=e["seq"],
                                             removal_reason=d.get("removal_reason"))
    for t in (takedowns.entries() if takedowns else []):
        if t.id not in history:  # recorded before takedowns were rows of the chain
            history[t.id] = {"takedown_id": t.id, "notice": t.notice, "subject": t.subject, "character": t.character,
                             "reason": t.reason, "added": stored(instant(t.created, "takedown time")),
                             "added_by": None, "added_row": None, "removed": None, "removed_by": None,
                             "removal_reason": None, "removed_row": None, "not_in_chain": True}
    return history


def takedown_drift(audit: AuditLog, ids_on_list: set[int]) -> list[str]:
    """Takedowns the chain says are in force but the list no longer holds: removed behind
    the guard's back (the list must be derivable from the chain)."""
    gone = []
    for h in takedown_history(audit, None).values():
        if h["removed"] is None and h["takedown_id"] not in ids_on_list:
            gone.append(f"takedown {h['takedown_id']} (notice {h['notice']}, added at row {h['added_row']}) is not "
                        "on the takedown list, and the chain records no removal")
    return gone


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
    head = integrity["head"]
    covered = ""
    if report.get("characters_covered"):
        covered = ("<h2>Characters covered</h2><table><tr><th>character</th><th>rights holder</th><th>references</th>"
                   "<th>authorized accounts</th></tr>" + "".join(
                       f"<tr><td>{html.escape(c['character'])}</td><td>{html.escape(str(c['holder'] or '-'))}</td>"
                       f"<td>{c['references']}</td><td>{c['authorized_accounts']}</td></tr>"
                       for c in report["characters_covered"]) + "</table>")
    takedown_rows = "".join(
        f"<tr><td>{t['takedown_id']}</td><td>{html.escape(str(t['notice']))}</td><td>{html.escape(str(t['subject']))}</td>"
        f"<td>{html.escape(str(t['character'] or '-'))}</td><td>{html.escape(t['added'])} ({html.escape(str(t['added_by'] or '-'))})</td>"
        f"<td>{html.escape(t['removed'] or 'still in force')}"
        + (f" ({html.escape(str(t['removed_by']))}: {html.escape(str(t['removal_reason'] or '-'))})" if t["removed"] else "")
        + "</td></tr>" for t in report["takedowns_in_force"]) or "<tr><td colspan=6>none</td></tr>"
    versions = "".join(
        "<table class=kv>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in (
            ("guard", html.escape(str(v["guard"]))), ("bank", f"<code>{html.escape(str(v['bank']))}</code>"),
            ("policy", f"<code>{html.escape(str(v['policy']))}</code>"), ("encoder", html.escape(str(v["encoder"]))),
            ("in force", f"{html.escape(v['first_seen'])} to {html.escape(v['last_seen'])}"),
            ("verdicts", str(v["verdicts"])))) + "</table>"
        for v in report["versions_in_force"]) or "<p>none</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>diffusion-guard duty-of-care report</title>
<style>@page{{size:A4;margin:18mm 15mm 20mm;@bottom-center{{content:"diffusion-guard duty-of-care report · page "
counter(page) " of " counter(pages);font-size:9pt;color:#555}}}}
@media print{{body{{margin:0;max-width:none}}h2{{break-after:avoid}}table,svg{{break-inside:avoid}}}}
code{{word-break:break-all}}
body{{font-family:system-ui,sans-serif;margin:2em;max-width:960px}}
table{{border-collapse:collapse;width:100%;table-layout:fixed;margin-bottom:1em}}td,th{{overflow-wrap:anywhere}}
table.kv th{{width:7em;text-align:left}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}.kpi{{display:inline-block;margin-right:2em}}
.kpi b{{font-size:1.6em;display:block}}</style></head><body>
<h1>Duty-of-care report</h1>
<p>Period: {html.escape(span)} (UTC) · generated {html.escape(report['generated'])}
 by {html.escape(str(report.get('generated_by') or 'unknown'))} · audit chain:
 {html.escape(chain)} ({integrity['rows']} rows)</p>
<p>Chain head (keep it: <code>guard audit verify --anchor</code> with this report proves later that no row up to
 it was changed or cut off): row {head['seq']}, <code>{html.escape(head['row_hash'])}</code></p>
<div class="kpi"><b>{report['verdicts']}</b>items checked</div>
<div class="kpi"><b>{report['by_action']['block']}</b>blocked</div>
<div class="kpi"><b>{report['by_action']['flag']}</b>sent to review</div>
<div class="kpi"><b>{report['takedowns']}</b>takedowns</div>
<div class="kpi"><b>{report['reupload_blocks']}</b>re-uploads blocked</div>
{_bars("Verdicts by action", report['by_action'])}
{_bars("Verdicts by surface and action", report['by_surface_and_action'])}
{_bars("Findings by character or rule", dict(list(report['by_character'].items())[:20]))}
<h2>Takedowns in force during the period</h2>
<table><tr><th>id</th><th>notice</th><th>subject</th><th>character</th><th>added (by)</th><th>removed (by, why)</th></tr>
{takedown_rows}</table>
<h2>Method and limits</h2>
{"".join(f"<p>{html.escape(p)}</p>" for p in report.get("method", []))}
<p>{html.escape(report.get("human_review", ""))}</p>
{covered}
<h2>Bank, policy and encoder in force</h2>
<p>Digests are SHA-256: of the bank file's contents (<code>guard bank info</code>) and of the policy as loaded.</p>
{versions}
</body></html>
"""
