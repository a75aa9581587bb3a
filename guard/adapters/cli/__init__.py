"""The ``guard`` command: parses arguments, calls the library, prints. Nothing else.

Exit status: 0 all allowed · 3 something flagged, nothing blocked · 4 something blocked ·
2 usage or configuration error · 1 the guard itself failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from rich.markup import escape

from guard import __version__
from guard.bank import Bank, add_characters, build_bank
from guard.encoders import load_encoder
from guard.errors import ConfigError, GuardError
from guard.facade import Guard
from guard.extract.images import image_files
from guard.adapters.scan import find_model_files, rescan, scan_files
from guard.verdict import Action, Surface
from guard.adapters.cli import output
from guard.adapters.cli.output import EXIT_FAILED, EXIT_OK, EXIT_TAMPERED, EXIT_USAGE, err, out

log = logging.getLogger("guard")
IMAGE_BATCH = 64


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bank", default=os.environ.get("GUARD_BANK"),
                        help="bank file (env GUARD_BANK)")
    common.add_argument("--policy", default=os.environ.get("GUARD_POLICY"),
                        help="policy TOML (env GUARD_POLICY; default: the shipped default policy)")
    common.add_argument("--encoder", default=os.environ.get("GUARD_ENCODER"),
                        help="encoder spec (env GUARD_ENCODER; default: the bank's encoder)")
    common.add_argument("--state", default=os.environ.get("GUARD_STATE"),
                        help="state folder: takedown list and audit log (env GUARD_STATE)")
    common.add_argument("--json", action="store_true", help="JSONL on stdout, one verdict per item")
    common.add_argument("--device", help="cuda, cpu, ... (default: CUDA when available)")
    common.add_argument("--allow-download", action="store_true",
                        help="let a production encoder spec download its weights once")
    common.add_argument("--operator", default=os.environ.get("GUARD_OPERATOR"),
                        help="who runs this, for the audit chain's takedown and notice rows "
                             "(env GUARD_OPERATOR; default: the login name)")
    common.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="guard", description="Keep protected characters out of "
                                     "what a diffusion platform trains, loads, generates and publishes.")
    parser.add_argument("--version", action="version", version=f"diffusion-guard {__version__}")
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    bank = groups.add_parser("bank", help="build and inspect banks").add_subparsers(dest="cmd", required=True)
    p = bank.add_parser("build", parents=[common], help="build a bank from a references folder")
    p.add_argument("refs_dir", help="one sub-folder per character, each with a character.toml")
    p.add_argument("-o", "--output", required=True, help="bank file to write (.safetensors)")
    p.add_argument("--reuse", help="an earlier bank whose unchanged embeddings are reused")
    p.set_defaults(run=cmd_bank_build)
    p = bank.add_parser("info", parents=[common], help="describe a bank")
    p.add_argument("bank_file")
    p.set_defaults(run=cmd_bank_info)
    p = bank.add_parser("add", parents=[common], help="add or replace characters (others are not re-encoded)")
    p.add_argument("bank_file")
    p.add_argument("character_dirs", nargs="+")
    p.set_defaults(run=cmd_bank_add)
    p = bank.add_parser("remove", parents=[common], help="remove characters from a bank")
    p.add_argument("bank_file")
    p.add_argument("ids", nargs="+")
    p.set_defaults(run=cmd_bank_remove)

    check = groups.add_parser("check", help="check prompts and images").add_subparsers(dest="cmd", required=True)
    p = check.add_parser("image", parents=[common], help="check image files (folders: recursively)")
    p.add_argument("paths", nargs="+")
    p.add_argument("--surface", default=Surface.GENERATED_IMAGE.value,
                   choices=["generated_image", "cover_image", "training_image"])
    p.add_argument("--account", help="the account that uploads or generates")
    p.set_defaults(run=cmd_check_image)
    p = check.add_parser("prompt", parents=[common], help="check a prompt, or many (one per line)")
    p.add_argument("text", nargs="?", help="the prompt; '-' reads prompts from stdin, one per line")
    p.add_argument("--file", help="read prompts from this file, one per line")
    p.add_argument("--negative", help="the negative prompt (never a finding)")
    p.add_argument("--account", help="the account that submits the prompt")
    p.set_defaults(run=cmd_check_prompt)
    p = check.add_parser("dataset", parents=[common], help="check a LoRA training set (images + captions)")
    p.add_argument("folder")
    p.add_argument("--account", help="the uploading account")
    p.set_defaults(run=cmd_check_dataset)
    p = check.add_parser("publication", parents=[common], help="check a publication before it goes public")
    p.add_argument("bundle", help="a folder (publication.json optional) or a JSON manifest")
    p.add_argument("--account", help="the publishing account (default: the manifest's)")
    p.set_defaults(run=cmd_check_publication)

    notice = groups.add_parser("notice", help="rights holders' notices").add_subparsers(dest="cmd", required=True)
    p = notice.add_parser("add", parents=[common], help="enroll or update a character from a notice")
    p.add_argument("--character", required=True, help="character id (new or existing)")
    p.add_argument("--refs", required=True, help="folder of reference images from the notice")
    p.add_argument("--holder", help="the rights holder")
    p.add_argument("--accounts", nargs="*", default=[], help="accounts authorized to use the character")
    p.add_argument("--name", action="append", default=[], metavar="LANG=NAME", help="a display name, e.g. en=Ultraman")
    p.set_defaults(run=cmd_notice_add)

    p = groups.add_parser("rescan", parents=[common], help="re-check a catalog against the current bank")
    p.add_argument("catalog", help="a folder tree, or a JSONL index of items")
    p.set_defaults(run=cmd_rescan)

    audit = groups.add_parser("audit", help="the audit log").add_subparsers(dest="cmd", required=True)
    p = audit.add_parser("verify", parents=[common], help="check the audit log's hash chain "
                         "(exit 0 intact, 5 tampered, 2 usage; works on a read-only copy)")
    p.add_argument("--anchor", action="append", default=[], metavar="FILE",
                   help="a duty-of-care report (or a head printed by --json) saved earlier: the rows it "
                        "recorded must still be there, unchanged (repeatable)")
    p.add_argument("--public-key", help="the operator's Ed25519 public key: signed anchors (guard audit sign) "
                                        "must verify with it")
    p.add_argument("--key-file", help="the chain's MAC key (env GUARD_AUDIT_KEY_FILE, or the key in GUARD_AUDIT_KEY): "
                                      "rows rewritten without it do not verify")
    p.set_defaults(run=cmd_audit_verify)
    p = audit.add_parser("sign", parents=[common], help="sign the chain's head with an Ed25519 key (export it; "
                         "run on a schedule)")
    p.add_argument("--signing-key", required=True, help="private key (guard audit keygen)")
    p.add_argument("-o", "--output", help="write the signed head here instead of stdout")
    p.set_defaults(run=cmd_audit_sign)
    p = audit.add_parser("purge", parents=[common], help="pseudonymise prompts and accounts past the policy's "
                         "[retention] (run daily; needs the audit key)")
    p.add_argument("--key-file", help="the audit key (env GUARD_AUDIT_KEY_FILE / GUARD_AUDIT_KEY)")
    p.set_defaults(run=cmd_audit_purge)
    p = audit.add_parser("keygen", parents=[common], help="make an Ed25519 key pair for signed heads")
    p.add_argument("folder", help="where to write audit-signing.key (0600) and audit-signing.pub")
    p.set_defaults(run=cmd_audit_keygen)
    p = audit.add_parser("report", parents=[common], help="duty-of-care summary (JSON, and HTML with --html)")
    p.add_argument("--since", help="start (inclusive): 2026-12-01, 2026-12-01T08:00+01:00 (no zone: UTC), "
                                   "today, yesterday, or an age such as 7d / 12h")
    p.add_argument("--until", help="end (exclusive), in the same forms")
    p.add_argument("--html", help="also write a self-contained HTML page here")
    p.add_argument("--pdf", help="also write it as a PDF (A4, numbered pages; the evidence extra)")
    p.add_argument("-o", "--output", help="write the JSON here instead of stdout")
    p.set_defaults(run=cmd_audit_report)
    p = groups.add_parser("scan", parents=[common], help="gate model files (LoRA, Checkpoint, embeddings)")
    p.add_argument("paths", nargs="+", help="files and folders (searched recursively)")
    p.add_argument("--metadata-only", action="store_true", help="read safetensors headers only")
    p.add_argument("--all", action="store_true", help="in folders, also check files without a model suffix")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per two cores for full scans, whose hashing keeps "
                        "two cores busy per file; one per core for header-only scans of 1,024 files or more)")
    p.add_argument("--account", help="the uploading account")
    p.add_argument("--trigger-words", nargs="*", default=[], help="trigger words declared with the upload")
    p.set_defaults(run=cmd_scan)

    p = groups.add_parser("serve", parents=[common], help="answer checks over HTTP (needs the [server] extra)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                   help="a folder whose files the …/path routes may read (repeatable; default: none)")
    p.add_argument("--max-model-mb", type=int, help="largest model upload, in MiB (default: 16 GiB)")
    p.add_argument("--token-file", help="file holding the bearer token every /v1 route wants "
                                        "(or env GUARD_TOKEN; default: no token check)")
    p.set_defaults(run=cmd_serve)

    p = groups.add_parser("convert", parents=[common], help="convert a pickle checkpoint that passes the gate "
                                                           "to safetensors")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    p.set_defaults(run=cmd_convert)

    takedown = groups.add_parser("takedown", help="the takedown list").add_subparsers(dest="cmd", required=True)
    p = takedown.add_parser("add", aliases=["apply"], parents=[common],
                            help="take items down and keep them down (model files, images, publications)")
    p.add_argument("items", nargs="+", metavar="ITEM")
    p.add_argument("--notice", required=True, help="the notice this answers (ticket id)")
    p.add_argument("--character", help="the protected character concerned")
    p.add_argument("--reason")
    p.set_defaults(run=cmd_takedown_add)
    p = takedown.add_parser("list", parents=[common], help="list taken-down items")
    p.set_defaults(run=cmd_takedown_list)
    p = takedown.add_parser("remove", parents=[common], help="remove every entry of a notice")
    p.add_argument("--notice", required=True)
    p.add_argument("--reason", help="why (kept in the audit chain with who and when)")
    p.set_defaults(run=cmd_takedown_remove)

    comfy = groups.add_parser("comfyui", help="guard a ComfyUI server").add_subparsers(dest="cmd", required=True)
    p = comfy.add_parser("install", parents=[common], help="write the diffusion_guard node pack into a ComfyUI folder")
    p.add_argument("comfyui", metavar="COMFYUI_DIR", help="the folder holding ComfyUI's main.py (or its --base-directory)")
    p.add_argument("--account-key", default=None, help="extra_data field naming the account (default guard_account)")
    p.set_defaults(run=cmd_comfyui_install)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help/--version exit 0
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except ConfigError as exc:  # messages quote TOML tables ([signals.x]): never read as markup
        err.print(f"[red]guard: {escape(str(exc))}[/]", highlight=False)
        return EXIT_USAGE
    except GuardError as exc:
        err.print(f"[red]guard: {escape(str(exc))}[/]", highlight=False)
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.print("guard: interrupted")
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 (the guard's own bug: one line, exit 1; -v shows where)
        log.debug("internal error", exc_info=True)
        err.print(f"[red]guard: internal error: {type(exc).__name__}: {escape(str(exc))}[/] (run with -v for details)",
                  highlight=False)
        return EXIT_FAILED


# Commands ----------------------------------------------------------------------------------
def _encoder_options(args) -> dict:
    return {"device": args.device, "allow_download": args.allow_download or None}


def _guard(args) -> Guard:
    if not args.bank:
        raise ConfigError("no bank given: pass --bank BANK or set GUARD_BANK")
    guard = Guard.open(args.bank, args.policy, args.encoder, args.state, **_encoder_options(args))
    if not guard.encoder_meaningful and not args.json:
        err.print(f"[yellow]encoder: {guard.versions['encoder']}[/]", highlight=False)
    return guard


def cmd_bank_build(args) -> int:
    if not args.encoder:
        raise ConfigError("bank build needs --encoder (or GUARD_ENCODER), e.g. --encoder ViT-L-14/openai")
    encoder = load_encoder(args.encoder, **_encoder_options(args))
    previous = Bank.load(args.reuse) if args.reuse else None
    bank = build_bank(args.refs_dir, encoder, previous)
    digest = bank.save(args.output)
    return _report_bank(args, bank, f"wrote {args.output} (sha256 {digest[:16]}…)")


def cmd_bank_info(args) -> int:
    return _report_bank(args, Bank.load(args.bank_file), None)


def cmd_bank_add(args) -> int:
    bank = Bank.load(args.bank_file)
    encoder = load_encoder(args.encoder or bank.encoder, **_encoder_options(args))
    added = add_characters(bank, [Path(d) for d in args.character_dirs], encoder)
    bank.save(args.bank_file)
    return _report_bank(args, bank, f"added or replaced: {', '.join(added)}")


def cmd_bank_remove(args) -> int:
    bank = Bank.load(args.bank_file)
    for cid in args.ids:
        bank.remove(cid)
    bank.save(args.bank_file)
    return _report_bank(args, bank, f"removed: {', '.join(args.ids)}")


def _report_bank(args, bank: Bank, message: str | None) -> int:
    info = bank.info()
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return EXIT_OK
    if message:
        out.print(message, highlight=False)
    out.print(f"bank {info['path']}: {info['characters']} characters, {info['image_exemplars']} image and "
              f"{info['text_exemplars']} text exemplars, encoder {info['encoder']} (dim {info['dim']})",
              highlight=False)
    for c in info["per_character"]:
        names = " / ".join(dict.fromkeys(c["names"].values())) or c["id"]
        out.print(f"  {c['id']}: {names} · holder {c['holder'] or '-'} · {c['references']} references · "
                  f"{c['aliases']} names and aliases", highlight=False)
    return EXIT_OK


def cmd_check_image(args) -> int:
    guard = _guard(args)
    paths = _expand_images(args.paths)
    verdicts = []
    with output.progress(len(paths), "checking images") as advance:
        for start in range(0, len(paths), IMAGE_BATCH):
            chunk = paths[start:start + IMAGE_BATCH]
            batch = guard.check_images(chunk, surface=args.surface, account=args.account)
            _emit(args, batch)
            verdicts += batch
            advance(len(chunk))
    return _finish(args, verdicts, "images")


def cmd_check_prompt(args) -> int:
    prompts = _read_prompts(args)
    guard = _guard(args)
    verdicts = []
    with output.progress(len(prompts), "checking prompts") as advance:
        for prompt in prompts:
            verdict = guard.check_prompt(prompt, negative=args.negative, account=args.account)
            _emit(args, [verdict])
            verdicts.append(verdict)
            advance(1)
    return _finish(args, verdicts, "prompts")


def _read_prompts(args) -> list[str]:
    if (args.text is None) == (args.file is None):
        raise ConfigError("give one prompt as TEXT, '-' to read prompts from stdin, or --file FILE")
    if args.file is None and args.text != "-":
        return [args.text]
    try:
        raw = sys.stdin.buffer.read() if args.file is None else Path(args.file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"--file {args.file}: cannot read it ({exc.strerror or exc})") from None
    # Odd encodings are decoded with replacement rather than refused: a prompt is still screened.
    return [line for line in raw.decode("utf-8", errors="replace").splitlines() if line.strip()]


def cmd_scan(args) -> int:
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be at least 1")
    guard = _guard(args)
    files = find_model_files(args.paths, args.all)
    guard_args = {"bank": args.bank, "policy": args.policy, "encoder": args.encoder, "state": args.state}
    check = {"account": args.account, "trigger_words": args.trigger_words, "metadata_only": args.metadata_only}
    verdicts = []
    with output.progress(len(files), "scanning") as advance:
        for verdict in scan_files(files, guard_args, args.workers, check, guard=guard):
            _emit(args, [verdict])
            verdicts.append(verdict)
            advance(1)
    if not args.json:
        output.print_scan_summary(verdicts)
    return output.exit_code(verdicts)


def cmd_serve(args) -> int:
    try:
        from guard.adapters.service import serve
    except ImportError as exc:
        raise ConfigError(f"guard serve needs the server extra ({exc.name} is missing): "
                          "pip install 'diffusion-guard[server]'") from None
    for folder in args.allow_path:
        if not Path(folder).is_dir():
            raise ConfigError(f"--allow-path {folder}: not a folder")
    limits = {"max_model_bytes": args.max_model_mb << 20} if args.max_model_mb else {}
    token = os.environ.get("GUARD_TOKEN")
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--token-file {args.token_file}: {exc}") from None
    if token is not None and len(token) < 16:
        raise ConfigError("the token is shorter than 16 characters")
    serve(_guard(args), args.host, args.port, allow_paths=args.allow_path, token=token, **limits)
    return EXIT_OK


def _takedowns(args):
    from guard.state import TakedownList

    return TakedownList(_state(args, "the takedown list"))


def cmd_takedown_add(args) -> int:
    guard = _guard(args)
    for item in args.items:
        for entry in guard.take_down(item, args.notice, args.character, args.reason, operator=_operator(args)):
            if args.json:
                print(json.dumps(entry.to_dict(), ensure_ascii=False))
                continue
            kept = (f"PDQ {entry.pdq.hex()[:16]}…" if entry.pdq else
                    f"{entry.to_dict()['fingerprint_layers']} fingerprinted layers")
            out.print(f"taken down under notice {entry.notice}: {entry.subject} (sha256 {entry.sha256[:16]}…, "
                      f"{kept})", highlight=False)
    return EXIT_OK


def cmd_comfyui_install(args) -> int:
    from guard.adapters.comfyui.install import install

    if not args.bank:
        raise ConfigError("no bank given: pass --bank BANK (the node pack reads it at every ComfyUI start)")
    Guard.open(args.bank, args.policy, args.encoder)  # a bank or policy that fails here would fail in ComfyUI
    pack = install(args.comfyui, bank=args.bank, policy=args.policy, state=args.state, encoder=args.encoder,
                   device=args.device, account_key=args.account_key)
    out.print(f"installed {pack} (settings in {pack / 'diffusion_guard.toml'}); restart ComfyUI to load it",
              highlight=False)
    return EXIT_OK


def cmd_convert(args) -> int:
    from guard.adapters.convert import ConversionRefused, convert_to_safetensors

    try:
        verdict = convert_to_safetensors(_guard(args), args.file, args.output)
    except ConversionRefused as refused:
        _emit(args, [refused.verdict])
        if not args.json:
            output.print_table([refused.verdict], title="not converted")
        return output.exit_code([refused.verdict])
    if args.json:
        output.emit_jsonl([verdict])
    else:
        out.print(f"converted {args.file} -> {args.output}", highlight=False)
    return EXIT_OK


def cmd_check_dataset(args) -> int:
    dataset, images = _guard(args).check_dataset(args.folder, account=args.account)
    _emit(args, images + [dataset])
    if not args.json:
        output.print_table([v for v in images if v.action is not Action.ALLOW] + [dataset], title="training set")
    return output.exit_code([dataset])


def cmd_check_publication(args) -> int:
    verdict = _guard(args).check_publication(args.bundle, account=args.account)
    _emit(args, [verdict])
    return _finish(args, [verdict], "publication")


def cmd_notice_add(args) -> int:
    if not args.bank:
        raise ConfigError("notice add updates a bank: pass --bank BANK or set GUARD_BANK")
    names = {}
    for item in args.name:
        lang, sep, name = item.partition("=")
        if not sep or not lang or not name:
            raise ConfigError(f"--name {item!r}: write it as LANG=NAME, e.g. en=Ultraman")
        names[lang] = name
    guard = _guard(args)
    char = guard.enroll(args.character, args.refs, args.holder, args.accounts, names, operator=_operator(args))
    guard.bank.save(args.bank)
    return _report_bank(args, guard.bank, f"enrolled {char.id}: {len(char.references)} references, "
                                          f"holder {char.holder or '-'}")


def cmd_rescan(args) -> int:
    guard = _guard(args)
    verdicts = []
    for verdict in rescan(guard, args.catalog):
        _emit(args, [verdict])
        verdicts.append(verdict)
    if not args.json:
        output.print_scan_summary(verdicts)
    return output.exit_code(verdicts)


def _state(args, what: str = "the audit log") -> str:
    if not args.state:
        raise ConfigError(f"{what} lives in a state folder: pass --state DIR or set GUARD_STATE")
    return args.state


def cmd_audit_verify(args) -> int:
    from guard.state import AuditLog

    from guard.state.audit import audit_key

    from guard.state.report import takedown_drift
    from guard.state.takedowns import read_ids

    state = _state(args)
    log = AuditLog(state, read_only=True, key=audit_key(args.key_file))
    anchors, unsigned = [], []
    for path in args.anchor:
        anchor, saved = _anchor(path)
        if "signature" in saved:
            if not args.public_key:
                raise ConfigError(f"--anchor {path} is signed: pass --public-key (the operator's) to check it")
            from guard.state.signing import check_signed_head

            try:
                check_signed_head(saved, args.public_key)
            except ValueError as exc:
                err.print(f"[red]signed head {escape(path)} is not genuine: {escape(str(exc))}[/]", highlight=False)
                return EXIT_TAMPERED
        anchors.append(anchor)
    result = log.verify(anchors)
    if result.ok:  # the takedown list must be what the chain says it is
        ids = read_ids(state)
        drift = takedown_drift(log, ids) if ids is not None else []
        if drift:
            result = dataclasses.replace(result, ok=False, bad_seq=None, reason="; ".join(drift))
    if args.json:
        print(json.dumps({**result.__dict__, "head": log.head()._asdict()}))
    elif result.ok:
        macs = f", {result.keyed_rows} MACs verified with the key" if result.keyed_rows else ""
        out.print(f"audit log intact: {result.rows} rows, hash chain verified{macs}", highlight=False)
        if result.note:
            err.print(f"[yellow]note: {escape(result.note)}[/]", highlight=False)
    else:
        where = f" at row {result.bad_seq}" if result.bad_seq else ""
        err.print(f"[red]audit log BROKEN{where}: {escape(result.reason or '')}[/]", highlight=False)
    return EXIT_OK if result.ok else EXIT_TAMPERED


def _anchor(path: str):
    """``(Anchor, the head as saved)`` from a report, a ``--json`` head or a signed head."""
    from guard.state import Anchor

    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
        head = saved.get("audit_log", {}).get("head") or saved.get("head") or saved
        return Anchor(int(head["seq"]), str(head["row_hash"])), head
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
        raise ConfigError(f"--anchor {path}: not a report or head saved by guard ({exc})") from None


def cmd_audit_sign(args) -> int:
    from guard.state import AuditLog
    from guard.state.signing import sign_head

    head = sign_head(AuditLog(_state(args), read_only=True), args.signing_key)
    text = json.dumps(head, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
        err.print(f"signed row {head['seq']} ({head['rows']} rows): {args.output}", highlight=False)
    else:
        print(text)
    return EXIT_OK


def cmd_audit_purge(args) -> int:
    from datetime import datetime, timedelta, timezone

    from guard.state import AuditLog
    from guard.state.audit import audit_key
    from guard.policy import Policy
    from guard.state.periods import stored

    retention = Policy.load(args.policy).retention
    if not retention.prompt_days and not retention.account_days:
        out.print("retention is off: the policy's [retention] prompt_days and account_days are 0", highlight=False)
        return EXIT_OK
    key = audit_key(args.key_file)
    state = _state(args)
    AuditLog(state, read_only=True).close()  # an existing log only: never created here
    now = datetime.now(timezone.utc)

    def before(days: float) -> str | None:
        return stored(now - timedelta(days=days)) if days else None

    done = AuditLog(state, key=key).purge(key, before(retention.prompt_days), before(retention.account_days),
                                           _operator(args))
    out.print(f"pseudonymised {done['pseudonymised']} rows (purge recorded at row {done['purge_row']})"
              + (f"; {done['kept_legacy_rows']} rows from before content commitments cannot be changed"
                 if done["kept_legacy_rows"] else ""), highlight=False)
    return EXIT_OK


def cmd_audit_keygen(args) -> int:
    from guard.state.signing import generate_keypair

    private, public = generate_keypair(args.folder)
    out.print(f"wrote {private} (keep it secret, outside the state folder) and {public} (publish it)",
              highlight=False)
    return EXIT_OK


def cmd_audit_report(args) -> int:
    from guard.state.report import build_report, render_html
    from guard.state import AuditLog, TakedownList

    from guard.state.periods import period

    state = _state(args)
    since, until = period(args.since, args.until)  # a wrong period is a usage error, before any work
    audit = AuditLog(state, read_only=True)
    bank = None
    if args.bank:
        from guard.bank import Bank

        bank = Bank.load(args.bank)
    report = build_report(audit, TakedownList(state), since, until, operator=_operator(args), bank=bank)
    text = json.dumps(report, ensure_ascii=False, indent=2)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--output {args.output}: cannot write it ({exc.strerror or exc})") from None
    else:
        print(text)
    if args.html:
        try:
            Path(args.html).write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--html {args.html}: cannot write it ({exc.strerror or exc})") from None
        err.print(f"wrote {args.html}", highlight=False)
    if args.pdf:
        from guard.state.report import render_pdf

        pages = render_pdf(report, args.pdf)
        err.print(f"wrote {args.pdf} ({pages} pages)", highlight=False)
    return EXIT_OK


def cmd_takedown_list(args) -> int:
    from guard.extract.lora import SCHEME

    entries = _takedowns(args).entries()
    for entry in entries:
        if args.json:
            print(json.dumps(entry.to_dict(), ensure_ascii=False))
        else:
            out.print(f"{entry.id}\t{entry.notice}\t{entry.character or '-'}\t{entry.created}\t{entry.subject}",
                      highlight=False)
    stale = [e for e in entries if e.fingerprint and e.fingerprint.scheme != SCHEME]
    if stale:  # their hashes still match exactly; their fingerprints no longer match anything
        err.print(f"[yellow]{len(stale)} takedown(s) hold fingerprints of an older recipe "
                  f"({', '.join(sorted({e.fingerprint.scheme for e in stale}))}, now {SCHEME}): re-uploads "
                  f"are caught by hash only until their files are taken down again[/]", highlight=False)
    return EXIT_OK


def _operator(args) -> str:
    if args.operator:
        return args.operator
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return f"uid {os.getuid()}"


def cmd_takedown_remove(args) -> int:
    removed = _takedowns(args).remove(args.notice, operator=_operator(args), reason=args.reason)
    if removed == 0:
        raise ConfigError(f"no takedown entry has notice {args.notice!r}")
    out.print(f"removed {removed} entr{'y' if removed == 1 else 'ies'} of notice {args.notice}", highlight=False)
    return EXIT_OK


def _emit(args, verdicts) -> None:
    if args.json:
        output.emit_jsonl(verdicts)


def _finish(args, verdicts, title: str) -> int:
    if not args.json:
        output.print_table(verdicts, title=title)
    return output.exit_code(verdicts)


def _expand_images(paths: Sequence[str]) -> list[str]:
    """Files as given (a missing one becomes a format verdict); folders: their images, sorted."""
    found: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += [str(p) for p in image_files(path, recursive=True)]
        else:
            found.append(raw)
    return found


if __name__ == "__main__":
    sys.exit(main())
