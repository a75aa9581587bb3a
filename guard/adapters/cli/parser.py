"""The ``guard`` command line: every command with the options it uses, its exit codes and an
example in ``--help``, and a suggestion for a mistyped command."""

from __future__ import annotations

import argparse
import difflib
import os
import re

from guard import __version__

EXIT_CODES = """exit status:
  0  all allowed            3  something flagged, nothing blocked
  4  something blocked      5  (audit verify) the chain does not verify
  2  usage or configuration error: a path that does not exist, an empty input set
     (unless --allow-empty), a bad option, bank or policy; nothing is recorded
  1  the guard itself failed (the verdict says error)"""

#: Options every command gets; the rest each command names (`_with`).
ATTRIBUTES = ("bank", "policy", "encoder", "state", "json", "device", "allow_download", "operator",
              "allow_empty", "account")


class Parser(argparse.ArgumentParser):
    """argparse with a "did you mean" for mistyped commands and choices."""

    def error(self, message: str):  # noqa: D401 (argparse's hook)
        wrong = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if wrong:
            choices = re.findall(r"'([^']*)'", wrong.group(2))
            close = difflib.get_close_matches(wrong.group(1), choices, n=1, cutoff=0.6)
            if close:
                message = f"{message}; did you mean '{close[0]}'?"
        super().error(message)


class _Group(argparse.ArgumentParser):
    """A parent parser whose options can be hidden from ``--help``."""

    def __init__(self, hidden: bool):
        super().__init__(add_help=False)
        self.hidden = hidden

    def add_argument(self, *args, **kwargs):
        if self.hidden:
            kwargs["help"] = argparse.SUPPRESS
        return super().add_argument(*args, **kwargs)


def _options(hidden: bool = False) -> dict[str, argparse.ArgumentParser]:
    """Option groups, each a parent parser. A command lists only the groups it uses; it still
    accepts the others, hidden and unused, so that a script passing --bank everywhere works."""
    def group(name: str) -> argparse.ArgumentParser:
        parser = _Group(hidden)
        groups[name] = parser
        return parser

    groups: dict[str, argparse.ArgumentParser] = {}
    p = group("bank")
    p.add_argument("--bank", default=os.environ.get("GUARD_BANK"), help="bank file (env GUARD_BANK)")
    p.add_argument("--policy", default=os.environ.get("GUARD_POLICY"),
                   help="policy TOML (env GUARD_POLICY; default: ./guard.toml if there is one, else the "
                        "shipped default policy)")
    p = group("encoder")
    p.add_argument("--encoder", default=os.environ.get("GUARD_ENCODER"),
                   help="encoder spec (env GUARD_ENCODER; default: the bank's encoder)")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: CUDA when available)")
    p.add_argument("--allow-download", action="store_true",
                   help="let a production encoder spec download its weights once")
    p = group("state")
    p.add_argument("--state", default=os.environ.get("GUARD_STATE"),
                   help="state folder: takedown list and audit log (env GUARD_STATE)")
    p = group("operator")
    p.add_argument("--operator", default=os.environ.get("GUARD_OPERATOR"),
                   help="who runs this, for the audit chain (env GUARD_OPERATOR; default: the login name)")
    p = group("account")
    p.add_argument("--account", help="the account that uploads, generates or publishes")
    p = group("empty")
    p.add_argument("--allow-empty", action="store_true",
                   help="an input set with nothing to check exits 0 (default: a usage error, exit 2)")
    p = group("json")
    p.add_argument("--json", action="store_true", help="JSONL on stdout, one verdict per item")
    p = group("log")
    p.add_argument("-v", "--verbose", action="store_true", help="log what is loaded and decided (--log-level info)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   default=os.environ.get("GUARD_LOG_LEVEL"), help="(env GUARD_LOG_LEVEL; default warning)")
    p.add_argument("--log-format", choices=["text", "json"], default=os.environ.get("GUARD_LOG_FORMAT", "text"),
                   help="json: one JSON object per log line on stderr, for log collectors (env GUARD_LOG_FORMAT)")
    return groups


def build_parser() -> argparse.ArgumentParser:
    opts, hidden = _options(), _options(hidden=True)
    parser = Parser(prog="guard", description="Keep protected characters out of what a diffusion platform "
                    "trains, loads, generates and publishes.", epilog=EXIT_CODES + "\n\n"
                    "Start with `guard policy init` and `guard bank build`; `guard COMMAND --help` shows each "
                    "command's options and an example.", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"diffusion-guard {__version__}")
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    def command(sub, name: str, uses: str, help: str, example: str, **kw) -> argparse.ArgumentParser:
        used = uses.split() + ["log"]
        parents = [opts[g] for g in used] + [hidden[g] for g in hidden if g not in used]
        return sub.add_parser(name, parents=parents, help=help, description=help[0].upper() + help[1:] + ".",
                              epilog=f"example:\n  {example}\n\n{EXIT_CODES}",
                              formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    def family(name: str, help: str):
        return groups.add_parser(name, help=help).add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    sub = family("bank", "build and inspect banks")
    p = command(sub, "build", "encoder json", "build a bank from a references folder",
                "guard bank build refs/ -o bank.safetensors --encoder ViT-L-14/openai")
    p.add_argument("refs_dir", help="one sub-folder per character, each with a character.toml")
    p.add_argument("-o", "--output", required=True, help="bank file to write (.safetensors)")
    p.add_argument("--reuse", help="an earlier bank whose unchanged embeddings are reused")
    p = command(sub, "info", "json", "describe a bank", "guard bank info bank.safetensors")
    p.add_argument("bank_file")
    p = command(sub, "add", "encoder json", "add or replace characters (others are not re-encoded)",
                "guard bank add bank.safetensors refs/new_character/")
    p.add_argument("bank_file")
    p.add_argument("character_dirs", nargs="+")
    p = command(sub, "remove", "json", "remove characters from a bank", "guard bank remove bank.safetensors mario")
    p.add_argument("bank_file")
    p.add_argument("ids", nargs="+")

    sub = family("check", "check prompts, images, training sets and publications")
    p = command(sub, "image", "bank encoder state account empty json", "check image files (folders: recursively)",
                "guard check image uploads/ --surface cover_image --account alice --bank bank.safetensors")
    p.add_argument("paths", nargs="+")
    p.add_argument("--surface", required=True, choices=["cover_image", "training_image", "generated_image"],
                   help="what the images are: recorded with every verdict, and the policy may treat them apart")
    p = command(sub, "prompt", "bank encoder state account empty json", "check a prompt, or many (one per line)",
                "guard check prompt \"奥特曼 fighting a kaiju\" --bank bank.safetensors")
    p.add_argument("text", nargs="?", help="the prompt; '-' reads prompts from stdin, one per line")
    p.add_argument("--file", help="read prompts from this file, one per line ('-': stdin)")
    p.add_argument("--negative", help="the negative prompt (never a finding)")
    p = command(sub, "dataset", "bank encoder state account empty json",
                "check a LoRA training set (images + captions)", "guard check dataset train/ --account alice")
    p.add_argument("folder")
    p = command(sub, "publication", "bank encoder state account empty json",
                "check a publication before it goes public (model file, covers, text)",
                "guard check publication upload-42/ --account alice")
    p.add_argument("bundle", help="a folder (publication.json optional; docs/formats.md) or a JSON manifest")

    sub = family("notice", "rights holders' notices")
    p = command(sub, "add", "bank encoder state operator json", "enroll or update a character from a notice",
                "guard notice add --character ultraman --refs notice-17/ --holder Tsuburaya --name en=Ultraman")
    p.add_argument("--character", required=True, help="character id (new or existing)")
    p.add_argument("--refs", required=True, help="folder of reference images from the notice")
    p.add_argument("--holder", help="the rights holder")
    p.add_argument("--accounts", nargs="*", default=[], help="accounts authorized to use the character")
    p.add_argument("--name", action="append", default=[], metavar="LANG=NAME", help="a display name, e.g. en=Ultraman")

    p = command(groups, "rescan", "bank encoder state empty json", "re-check a catalog against the current bank",
                "guard rescan /catalog --state state/   # or a JSONL index (docs/formats.md)")
    p.add_argument("catalog", help="a folder tree, or a JSONL index of items (docs/formats.md)")

    p = command(groups, "scan", "bank encoder state account empty json",
                "gate model files (LoRA, Checkpoint, embeddings)",
                "guard scan /catalog/loras --state state/ --bank bank.safetensors")
    p.add_argument("paths", nargs="+", help="files and folders (searched recursively)")
    p.add_argument("--metadata-only", action="store_true", help="read safetensors headers only (no hashes)")
    p.add_argument("--all", action="store_true", help="in folders, also check files without a model suffix")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per two cores for full scans, whose hashing keeps "
                        "two cores busy per file; one per core for header-only scans of 1,024 files or more)")
    p.add_argument("--trigger-words", nargs="*", default=[], help="trigger words declared with the upload")

    p = command(groups, "convert", "bank encoder state json",
                "convert a pickle checkpoint that passes the gate to safetensors (no bank needed: without one, "
                "only the file itself is gated)", "guard convert old_model.ckpt -o old_model.safetensors")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True, help="the .safetensors file to write")

    sub = family("takedown", "the takedown list")
    p = command(sub, "add", "bank state operator json",
                "take items down and keep them down (model files, images, publications); the bank is needed "
                "only to check --character", "guard takedown add upload.safetensors --notice DMCA-123 --state state/",
                aliases=["apply"])
    p.add_argument("items", nargs="+", metavar="ITEM")
    p.add_argument("--notice", required=True, help="the notice this answers (ticket id)")
    p.add_argument("--character", help="the protected character concerned")
    p.add_argument("--reason")
    p = command(sub, "list", "state json", "list taken-down items", "guard takedown list --state state/")
    p = command(sub, "remove", "state operator", "remove every entry of a notice",
                "guard takedown remove --notice DMCA-123 --reason 'counter-notice upheld' --state state/")
    p.add_argument("--notice", required=True)
    p.add_argument("--reason", help="why (kept in the audit chain with who and when)")

    sub = family("audit", "the audit log")
    p = command(sub, "verify", "state json", "check the audit log's hash chain "
                "(exit 0 intact, 5 tampered, 2 usage; works on a read-only copy)",
                "guard audit verify --state state/ --anchor report-2026-11.json")
    p.add_argument("--anchor", action="append", default=[], metavar="FILE",
                   help="a duty-of-care report (or a head printed by --json) saved earlier: the rows it "
                        "recorded must still be there, unchanged (repeatable)")
    p.add_argument("--public-key", help="the operator's Ed25519 public key: signed anchors (guard audit sign) "
                                        "must verify with it")
    p.add_argument("--key-file", help="the chain's MAC key (env GUARD_AUDIT_KEY_FILE, or the key in GUARD_AUDIT_KEY): "
                                      "rows rewritten without it do not verify")
    p.add_argument("--tsa-cert", help="the time-stamping authority's certificate (PEM): time-stamped anchors "
                                      "(guard audit timestamp) must verify with it")
    p = command(sub, "timestamp", "state", "have an RFC 3161 time-stamping authority sign the chain's head "
                "(a third party's proof of when; the evidence extra)",
                "guard audit timestamp --state state/ --tsa https://tsa.example/tsr -o head-tsa.json")
    p.add_argument("--tsa", required=True, help="the TSA's URL (RFC 3161 over HTTP)")
    p.add_argument("-o", "--output", help="write the time-stamped head here instead of stdout")
    p = command(sub, "sign", "state", "sign the chain's head with an Ed25519 key (export it; run on a schedule)",
                "guard audit sign --state state/ --signing-key keys/audit-signing.key -o head.json")
    p.add_argument("--signing-key", required=True, help="private key (guard audit keygen)")
    p.add_argument("-o", "--output", help="write the signed head here instead of stdout")
    p = command(sub, "purge", "bank state operator", "pseudonymise prompts and accounts past the policy's "
                "[retention] (run daily; needs the audit key)", "guard audit purge --state state/ --policy guard.toml")
    p.add_argument("--key-file", help="the audit key (env GUARD_AUDIT_KEY_FILE / GUARD_AUDIT_KEY)")
    p = command(sub, "keygen", "", "make an Ed25519 key pair for signed heads", "guard audit keygen keys/")
    p.add_argument("folder", help="where to write audit-signing.key (0600) and audit-signing.pub")
    p = command(sub, "report", "bank state operator", "duty-of-care report (JSON; HTML with --html, PDF with --pdf)",
                "guard audit report --state state/ --since 2026-11-01 --until 2026-12-01 --pdf nov.pdf")
    p.add_argument("--since", help="start (inclusive): 2026-12-01, 2026-12-01T08:00+01:00 (no zone: UTC), "
                                   "today, yesterday, or an age such as 7d / 12h")
    p.add_argument("--until", help="end (exclusive), in the same forms")
    p.add_argument("--html", help="also write a self-contained HTML page here")
    p.add_argument("--pdf", help="also write it as a PDF (A4, numbered pages; the evidence extra)")
    p.add_argument("-o", "--output", help="write the JSON here instead of stdout")

    p = command(groups, "serve", "bank encoder state", "answer checks over HTTP (the server extra)",
                "guard serve --bank bank.safetensors --state state/ --token-file token --port 8080")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                   help="a folder whose files the …/path routes may read (repeatable; default: none)")
    p.add_argument("--max-model-mb", type=int, help="largest model upload, in MiB (default: 16 GiB)")
    p.add_argument("--token-file", help="file holding the bearer token every /v1 route wants "
                                        "(or env GUARD_TOKEN; default: no token check)")

    sub = family("policy", "the policy file")
    p = command(sub, "init", "", "write a commented starting policy (the shipped defaults)",
                "guard policy init guard.toml")
    p.add_argument("file", nargs="?", default="guard.toml", help="where to write it (default: ./guard.toml)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p = command(sub, "check", "bank", "load a policy (and a bank): say what is wrong, or what is in force",
                "guard policy check --policy guard.toml --bank bank.safetensors")

    sub = family("comfyui", "guard a ComfyUI server")
    p = command(sub, "install", "bank encoder state", "write the diffusion_guard node pack into a ComfyUI folder",
                "guard comfyui install ~/ComfyUI --bank bank.safetensors --state state/")
    p.add_argument("comfyui", metavar="COMFYUI_DIR", help="the folder holding ComfyUI's main.py (or its --base-directory)")
    p.add_argument("--account-key", default=None, help="extra_data field naming the account (default guard_account)")
    return parser
