"""The ``guard`` command: parses arguments, calls the library, prints. Nothing else.

Exit status: 0 all allowed · 3 something flagged, nothing blocked · 4 something blocked ·
5 (audit verify) tampered · 2 usage or configuration error (a path that does not exist, an
empty input set) · 1 the guard itself failed. Each command imports only what it uses:
takedown, audit and header-only commands never load torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from rich.markup import escape

from guard.errors import ConfigError, GuardError
from guard.verdict import Action
from guard.adapters.cli import output
from guard.adapters.cli.inputs import NothingToCheck, folder_has_files, require_existing, require_items
from guard.adapters.cli.output import EXIT_FAILED, EXIT_OK, EXIT_TAMPERED, EXIT_USAGE, err, out
from guard.adapters.cli.parser import ATTRIBUTES, build_parser

if TYPE_CHECKING:
    from guard.facade import Guard

log = logging.getLogger("guard")
IMAGE_BATCH = 64
PROMPT_BATCH = 32
#: A policy file in the working directory is used when neither --policy nor GUARD_POLICY names one.
LOCAL_POLICY = "guard.toml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help/--version exit 0
        return int(exc.code or 0)
    for name in ATTRIBUTES:  # options a command does not take read as unset
        if not hasattr(args, name):
            setattr(args, name, None)
    output.configure_logging(args.log_level or ("info" if args.verbose else "warning"), args.log_format)
    try:
        return globals()[COMMANDS[(args.group, getattr(args, "cmd", None))]](args)
    except NothingToCheck as empty:
        err.print(str(empty), highlight=False)
        return EXIT_OK
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
        err.print(f"[red]guard: internal error: {type(exc).__name__}: {escape(str(exc))}[/] "
                  "(run with --log-level debug for details)", highlight=False)
        return EXIT_FAILED


# Commands ----------------------------------------------------------------------------------
def _encoder_options(args) -> dict:
    return {"device": args.device, "allow_download": args.allow_download or None}


def _guard(args, bank_needed: bool = True) -> Guard:
    """The facade for this command. ``bank_needed=False``: a command that works without a bank
    (a takedown, a conversion) gets an empty one when none is given."""
    from guard.facade import Guard

    policy = _policy_path(args)
    if not args.bank:
        if bank_needed:
            raise ConfigError("no bank given: pass --bank BANK or set GUARD_BANK")
        from guard.bank import Bank
        from guard.policy import Policy

        log.info("no bank: only checks that need none run")
        return Guard(Bank("none", 0), Policy.load(policy), None, args.state)
    guard = Guard.open(args.bank, policy, args.encoder, args.state, **_encoder_options(args))
    log.info("bank %s: %d characters, encoder %s, sha256 %s", args.bank, len(guard.bank), guard.bank.encoder,
             guard.versions["bank"])
    log.info("policy %s (sha256 %s); state %s", policy or "shipped default", guard.versions["policy"],
             args.state or "none (nothing recorded)")
    if not guard.encoder_meaningful:
        if args.log_format == "json":
            log.warning("encoder: %s", guard.versions["encoder"])
        elif not args.json:
            err.print(f"[yellow]encoder: {guard.versions['encoder']}[/]", highlight=False)
    return guard


def _policy_path(args) -> str | None:
    if args.policy:
        return args.policy
    if os.path.isfile(LOCAL_POLICY):
        log.info("policy: ./%s (no --policy or GUARD_POLICY given)", LOCAL_POLICY)
        return LOCAL_POLICY
    return None


def cmd_bank_build(args) -> int:
    from guard.bank import Bank, build_bank
    from guard.encoders import load_encoder

    if not args.encoder:
        raise ConfigError("bank build needs --encoder (or GUARD_ENCODER), e.g. --encoder ViT-L-14/openai")
    require_existing([args.refs_dir], "references folder")
    encoder = load_encoder(args.encoder, **_encoder_options(args))
    previous = Bank.load(args.reuse) if args.reuse else None
    bank = build_bank(args.refs_dir, encoder, previous)
    digest = bank.save(args.output)
    return _report_bank(args, bank, f"wrote {args.output} (sha256 {digest[:16]}…)")


def cmd_bank_info(args) -> int:
    from guard.bank import Bank

    return _report_bank(args, Bank.load(args.bank_file), None)


def cmd_bank_add(args) -> int:
    from guard.bank import Bank, add_characters
    from guard.encoders import load_encoder

    require_existing(args.character_dirs, "character folder")
    bank = Bank.load(args.bank_file)
    encoder = load_encoder(args.encoder or bank.encoder, **_encoder_options(args))
    added = add_characters(bank, [Path(d) for d in args.character_dirs], encoder)
    bank.save(args.bank_file)
    return _report_bank(args, bank, f"added or replaced: {', '.join(added)}")


def cmd_bank_remove(args) -> int:
    from guard.bank import Bank

    bank = Bank.load(args.bank_file)
    for cid in args.ids:
        bank.remove(cid)
    bank.save(args.bank_file)
    return _report_bank(args, bank, f"removed: {', '.join(args.ids)}")


def _report_bank(args, bank, message: str | None) -> int:
    info = bank.info()
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return EXIT_OK
    if message:
        out.print(message, highlight=False)
    out.print(f"bank {info['path']}: {output.count(info['characters'], 'character')}, "
              f"{output.count(info['image_exemplars'], 'image exemplar')} and "
              f"{output.count(info['text_exemplars'], 'text exemplar')}, encoder {info['encoder']} (dim {info['dim']})",
              highlight=False)
    for c in info["per_character"]:
        names = " / ".join(dict.fromkeys(c["names"].values())) or c["id"]
        out.print(f"  {c['id']}: {names} · holder {c['holder'] or '-'} · {output.count(c['references'], 'reference')} · "
                  f"{output.count(c['aliases'], 'name or alias', 'names and aliases')}", highlight=False)
    return EXIT_OK


def cmd_check_image(args) -> int:
    require_existing(args.paths)
    paths = _expand_images(args.paths)
    require_items(paths, args.allow_empty, "images", args.paths)
    guard = _guard(args)
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
    require_items(prompts, args.allow_empty, "prompts", [args.file or "stdin"])
    guard = _guard(args)
    verdicts = []
    with output.progress(len(prompts), "checking prompts") as advance:
        for start in range(0, len(prompts), PROMPT_BATCH):  # one encoder forward per batch
            chunk = prompts[start:start + PROMPT_BATCH]
            batch = guard.check_prompts(chunk, [args.negative] * len(chunk), [args.account] * len(chunk))
            _emit(args, batch)
            verdicts += batch
            advance(len(chunk))
    return _finish(args, verdicts, "prompts")


def _read_prompts(args) -> list[str]:
    if (args.text is None) == (args.file is None):
        raise ConfigError("give one prompt as TEXT, '-' (or --file -) to read prompts from stdin, or --file FILE")
    source = args.file if args.file is not None else args.text
    if source != "-" and args.file is None:
        return [args.text]
    if source != "-":
        require_existing([source], "prompts file")
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise ConfigError(f"--file {source}: cannot read it ({exc.strerror or exc})") from None
    # Odd encodings are decoded with replacement rather than refused: a prompt is still screened.
    return [line for line in raw.decode("utf-8", errors="replace").splitlines() if line.strip()]


def cmd_scan(args) -> int:
    from guard.adapters.scan import find_model_files, scan_files

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be at least 1")
    require_existing(args.paths)
    files = find_model_files(args.paths, args.all)
    require_items(files, args.allow_empty, "model files (add --all for files without a model suffix)", args.paths)
    guard = _guard(args)
    guard_args = {"bank": args.bank, "policy": _policy_path(args), "encoder": args.encoder, "state": args.state}
    check = {"account": args.account, "trigger_words": args.trigger_words, "metadata_only": args.metadata_only}
    verdicts = []
    with output.progress(len(files), "scanning") as advance:
        for verdict in scan_files(files, guard_args, args.workers, check, guard=guard):
            _emit(args, [verdict])
            verdicts.append(verdict)
            advance(1)
    if not args.json:
        output.print_scan_summary(verdicts, "model files needing action")
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
    # JSON logs: uvicorn's own (access lines included) go through the same JSON handler.
    serve(_guard(args), args.host, args.port, allow_paths=args.allow_path, token=token,
          log_config=None if args.log_format == "json" else "default", **limits)
    return EXIT_OK


def _takedowns(args):
    from guard.state import TakedownList
    from guard.state.folder import existing_folder

    return TakedownList(existing_folder(_state(args, "the takedown list")))


def cmd_takedown_add(args) -> int:
    require_existing(args.items)
    guard = _guard(args, bank_needed=bool(args.character))
    for item in args.items:
        for entry in guard.take_down(item, args.notice, args.character, args.reason, operator=_operator(args)):
            if args.json:
                print(json.dumps(entry.to_dict(), ensure_ascii=False))
                continue
            kept = (f"PDQ {entry.pdq.hex()[:16]}…" if entry.pdq else
                    output.count(entry.to_dict()['fingerprint_layers'], 'fingerprinted layer'))
            out.print(f"taken down under notice {entry.notice}: {entry.subject} (sha256 {entry.sha256[:16]}…, "
                      f"{kept})", highlight=False)
    return EXIT_OK


def cmd_comfyui_install(args) -> int:
    from guard.adapters.comfyui.install import install
    from guard.facade import Guard

    if not args.bank:
        raise ConfigError("no bank given: pass --bank BANK (the node pack reads it at every ComfyUI start)")
    require_existing([args.comfyui], "ComfyUI folder")
    policy = _policy_path(args)
    Guard.open(args.bank, policy, args.encoder)  # a bank or policy that fails here would fail in ComfyUI
    pack = install(args.comfyui, bank=args.bank, policy=policy, state=args.state, encoder=args.encoder,
                   device=args.device, account_key=args.account_key)
    out.print(f"installed {pack} (settings in {pack / 'diffusion_guard.toml'}); restart ComfyUI to load it",
              highlight=False)
    return EXIT_OK


def cmd_convert(args) -> int:
    from guard.adapters.convert import ConversionRefused, convert_to_safetensors

    require_existing([args.file])
    try:
        verdict = convert_to_safetensors(_guard(args, bank_needed=False), args.file, args.output)
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
    from guard.extract.images import image_files

    require_existing([args.folder], "training-set folder")
    if os.path.isdir(args.folder):
        require_items(image_files(Path(args.folder), recursive=True), args.allow_empty, "images", [args.folder])
    dataset, images = _guard(args).check_dataset(args.folder, account=args.account)
    _emit(args, images + [dataset])
    if not args.json:
        output.print_table([v for v in images if v.action is not Action.ALLOW] + [dataset], title="training set")
    return output.exit_code([dataset])


def cmd_check_publication(args) -> int:
    require_existing([args.bundle], "publication folder or manifest")
    if os.path.isdir(args.bundle):
        require_items([1] if folder_has_files(args.bundle) else [], args.allow_empty, "files", [args.bundle])
    verdict = _guard(args).check_publication(args.bundle, account=args.account)
    _emit(args, [verdict])
    if not args.json:
        output.print_publication(verdict)
    return output.exit_code([verdict])


def cmd_notice_add(args) -> int:
    if not args.bank:
        raise ConfigError("notice add updates a bank: pass --bank BANK or set GUARD_BANK")
    require_existing([args.refs], "references folder")
    names = {}
    for item in args.name:
        lang, sep, name = item.partition("=")
        if not sep or not lang or not name:
            raise ConfigError(f"--name {item!r}: write it as LANG=NAME, e.g. en=Ultraman")
        names[lang] = name
    guard = _guard(args)
    char = guard.enroll(args.character, args.refs, args.holder, args.accounts, names, operator=_operator(args))
    guard.bank.save(args.bank)
    return _report_bank(args, guard.bank, f"enrolled {char.id}: {output.count(len(char.references), 'reference')}, "
                                          f"holder {char.holder or '-'}")


def cmd_rescan(args) -> int:
    from guard.adapters.scan import catalog_items, rescan

    require_existing([args.catalog], "catalog")
    items = catalog_items(args.catalog)
    require_items(items, args.allow_empty, "items", [args.catalog])
    guard = _guard(args)
    verdicts = []
    with output.progress(len(items), "rescanning") as advance:
        for verdict in rescan(guard, args.catalog, items):
            _emit(args, [verdict])
            verdicts.append(verdict)
            advance(1)
    if not args.json:
        output.print_scan_summary(verdicts, "catalog items needing action")
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
        if "timestamp" in saved:
            if not args.tsa_cert:
                raise ConfigError(f"--anchor {path} is time-stamped: pass --tsa-cert (the TSA's certificate) to check it")
            from guard.state.timestamps import check_timestamp

            try:
                when = check_timestamp(saved, args.tsa_cert)
            except ValueError as exc:
                err.print(f"[red]time-stamp {escape(path)} is not genuine: {escape(str(exc))}[/]", highlight=False)
                return EXIT_TAMPERED
            if not args.json:
                out.print(f"{path}: row {anchor.seq} time-stamped by the TSA at {when.isoformat()}", highlight=False)
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


def cmd_audit_timestamp(args) -> int:
    from guard.state import AuditLog
    from guard.state.timestamps import request_timestamp

    head = AuditLog(_state(args), read_only=True).head()._asdict()
    stamped = request_timestamp(head, args.tsa)
    text = json.dumps(stamped, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
        err.print(f"time-stamped row {stamped['seq']} at {stamped['timestamp']['gen_time']}: {args.output}",
                  highlight=False)
    else:
        print(text)
    return EXIT_OK


def cmd_audit_purge(args) -> int:
    from datetime import datetime, timedelta, timezone

    from guard.state import AuditLog
    from guard.state.audit import audit_key
    from guard.policy import Policy
    from guard.state.periods import stored

    retention = Policy.load(_policy_path(args)).retention
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
    from guard.state.takedowns import read_entries

    entries = read_entries(_state(args, "the takedown list"))
    if args.json:
        for entry in entries:
            print(json.dumps(entry.to_dict(), ensure_ascii=False))
    else:
        output.print_takedowns(entries)
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
    """Files as given (an unreadable one becomes a format verdict); folders: their images, sorted."""
    from guard.extract.images import image_files

    found: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += [str(p) for p in image_files(path, recursive=True)]
        else:
            found.append(raw)
    return found


def cmd_policy_init(args) -> int:
    from guard.policy import DEFAULT_POLICY

    target = Path(args.file)
    if target.exists() and not args.force:
        raise ConfigError(f"{target} exists: pass --force to replace it")
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    header = ("# Written by `guard policy init`: the shipped defaults, every key explained. Keep what you\n"
              "# change and delete the rest (this file is layered over the defaults); `guard policy check`\n"
              "# says whether it loads. The guard reads ./guard.toml when no --policy is given.\n\n")
    try:
        target.write_text(header + text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{target}: cannot write it ({exc.strerror or exc})") from None
    out.print(f"wrote {target}: edit it, then `guard policy check --policy {target} --bank BANK`", highlight=False)
    return EXIT_OK


def cmd_policy_check(args) -> int:
    from guard.policy import Policy

    path = _policy_path(args)
    policy = Policy.load(path)
    if args.bank:
        from guard.bank import Bank

        policy.check_characters(Bank.load(args.bank))
    settings = policy.settings
    out.print(f"policy {path or 'shipped default'} loads (sha256 {policy.digest}): fail mode "
              f"{settings.fail_mode}, prompts up to {policy.text.max_prompt_chars:,} characters"
              + (f", {len(policy.character_ids)} character sections, all in the bank" if args.bank else ""),
              highlight=False)
    return EXIT_OK


#: (group, command) -> the function's name, looked up when run.
COMMANDS = {
    ("bank", "build"): "cmd_bank_build", ("bank", "info"): "cmd_bank_info", ("bank", "add"): "cmd_bank_add",
    ("bank", "remove"): "cmd_bank_remove",
    ("check", "image"): "cmd_check_image", ("check", "prompt"): "cmd_check_prompt",
    ("check", "dataset"): "cmd_check_dataset", ("check", "publication"): "cmd_check_publication",
    ("notice", "add"): "cmd_notice_add", ("rescan", None): "cmd_rescan", ("scan", None): "cmd_scan",
    ("convert", None): "cmd_convert", ("serve", None): "cmd_serve",
    ("takedown", "add"): "cmd_takedown_add", ("takedown", "apply"): "cmd_takedown_add",
    ("takedown", "list"): "cmd_takedown_list", ("takedown", "remove"): "cmd_takedown_remove",
    ("audit", "verify"): "cmd_audit_verify", ("audit", "sign"): "cmd_audit_sign",
    ("audit", "timestamp"): "cmd_audit_timestamp", ("audit", "purge"): "cmd_audit_purge",
    ("audit", "keygen"): "cmd_audit_keygen", ("audit", "report"): "cmd_audit_report",
    ("policy", "init"): "cmd_policy_init", ("policy", "check"): "cmd_policy_check",
    ("comfyui", "install"): "cmd_comfyui_install",
}


if __name__ == "__main__":
    sys.exit(main())
