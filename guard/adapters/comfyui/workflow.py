"""The server-wide workflow guard: an on_prompt handler that screens every queued graph.

ComfyUI logs and ignores an exception raised by an on_prompt handler, so refusing by raising
would fail open. A refused workflow is instead replaced by a one-node graph whose node fails
validation with the guard's reason: ComfyUI answers 400 with that reason and runs nothing.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from typing import Any

from guard.adapters.comfyui.runtime import Runtime
from guard.facade import WorkflowFile, WorkflowText

log = logging.getLogger("guard.comfyui")
REFUSAL_NODE = "DiffusionGuardRefusal"
EMBEDDING = re.compile(r"embedding:([^\s,()\[\]{}<>|]+)", re.IGNORECASE)
MODEL_SUFFIXES = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft", ".gguf"}


def handler(runtime: Runtime, wrap_outputs):
    """The on_prompt handler: ``body`` in, the same or a refusal out; never raises."""

    def on_prompt(body: Any) -> Any:
        try:
            return screen(runtime, body, wrap_outputs)
        except Exception as exc:  # noqa: BLE001 (raising here would let the workflow run)
            log.exception("workflow guard failed")
            return refusal(body, f"diffusion-guard failed while checking this workflow "
                                      f"({type(exc).__name__}: {exc}); nothing was run")
    return on_prompt


def screen(runtime: Runtime, body: Any, wrap_outputs) -> Any:
    if not isinstance(body, dict) or not isinstance(body.get("prompt"), dict):
        return body  # ComfyUI itself answers "no prompt"
    if runtime.guard is None:
        return refusal(body, runtime.problem or "diffusion-guard is not loaded")
    graph = body["prompt"]
    extra = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
    account = extra.get(runtime.account_key)
    account = str(account) if account not in (None, "") else None
    # Fix the id now, so the verdict, the audit row and ComfyUI's history name the same run.
    prompt_id = str(body.setdefault("prompt_id", str(uuid.uuid4())))
    texts, files = read_graph(graph)
    verdict = runtime.guard.check_workflow(f"comfyui workflow {prompt_id}", texts, files, account)
    if verdict.blocked:
        return refusal(body, "refused by diffusion-guard: " + reasons(verdict))
    wrap_outputs({node.get("class_type") for node in graph.values() if isinstance(node, dict)})
    return body


def reasons(verdict) -> str:
    blocking = [f for f in verdict.findings if f.action is verdict.action] or list(verdict.findings)
    said = [f"{f.evidence.get('part', '?')}: {f.subject} ({f.signal.value})" for f in blocking[:6]]
    if verdict.error:
        said.append(f"the guard could not check everything: {verdict.error}")
    return "; ".join(said) or verdict.action.value


def refusal(body: Any, reason: str) -> dict:
    """``body`` with its graph replaced by one node that fails validation with ``reason``."""
    refused = dict(body) if isinstance(body, dict) else {}
    refused["prompt"] = {"diffusion_guard": {"class_type": REFUSAL_NODE, "inputs": {"reason": reason}}}
    refused.pop("partial_execution_targets", None)
    return refused


def read_graph(graph: dict) -> tuple[list[WorkflowText], list[WorkflowFile]]:
    """Every string input as text (negative when it only feeds negative conditioning) and
    every input naming a model file in ComfyUI's model folders, or an existing model file
    by path, plus ``embedding:NAME`` tokens."""
    negative, positive = _upstream(graph, "negative"), _upstream(graph, None)
    texts: list[WorkflowText] = []
    files: list[WorkflowFile] = []
    for node_id, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        kind = node.get("class_type")
        only_negative = node_id in negative and node_id not in positive
        for name, value in node["inputs"].items():
            if not isinstance(value, str):
                continue
            part = f"node {node_id} ({kind}) {name}"
            path = model_path(value)
            if path is not None:
                files.append(WorkflowFile(part, path))
            texts.append(WorkflowText(part, value, negative=only_negative))
            for token in EMBEDDING.findall(value):
                found = model_path(token, ("embeddings",))
                if found is not None:
                    files.append(WorkflowFile(f"{part} embedding:{token}", found))
    return texts, files


def model_path(value: str, folders=None) -> str | None:
    """The file a string names in ComfyUI's model folders (or an existing model file by
    absolute path), else ``None``. Only names with a model-file suffix are looked up; a
    diffusers folder is loaded file by file, through the load gate."""
    import folder_paths

    suffix = os.path.splitext(value)[1].lower()
    if folders is None and suffix not in MODEL_SUFFIXES:
        return None
    candidates = [value] if suffix else [value + e for e in sorted(MODEL_SUFFIXES)]
    for folder in folders or folder_paths.folder_names_and_paths:
        if folder in ("custom_nodes", "configs"):
            continue
        for candidate in candidates:
            found = folder_paths.get_full_path(folder, candidate)
            if found:
                return found
    if folders is None and os.path.isabs(value) and os.path.isfile(value):
        return value  # a custom node's own path input
    return None


def _upstream(graph: dict, input_name: str | None) -> set[str]:
    """Nodes upstream of inputs called ``input_name``; with ``None``, upstream of every other
    input, never crossing a ``negative`` one (a sampler's negative branch stays negative)."""
    seen: set[str] = set()
    stack = []
    for node in graph.values():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        for name, value in node["inputs"].items():
            if _is_link(value) and ((name == input_name) if input_name else name != "negative"):
                stack.append(str(value[0]))
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in graph:
            continue
        seen.add(node_id)
        inputs = graph[node_id].get("inputs") if isinstance(graph[node_id], dict) else None
        for name, value in (inputs or {}).items():
            if _is_link(value) and (input_name or name != "negative"):
                stack.append(str(value[0]))
    return seen


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
