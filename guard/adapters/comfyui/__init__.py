"""diffusion-guard inside ComfyUI: a node pack that guards the whole server.

``guard comfyui install COMFYUI_DIR`` writes ``custom_nodes/diffusion_guard/`` (a shim that
calls `setup`, and its ``diffusion_guard.toml``). `setup` loads the guard once per process
on ComfyUI's device and installs, in this order: the workflow guard (an on_prompt handler:
every queued graph's texts and model files, before anything runs), the load gate (every
model file any node loads), early abort in the samplers (the policy's ``[generation]
early_abort_every``), the output guard (every image reaching an output node) and the nodes
for workflow authors. Nothing here imports ComfyUI until `setup` runs.
"""

from __future__ import annotations

import functools
from pathlib import Path

from guard.adapters.comfyui.runtime import CONFIG_NAME, Request, Runtime, current

__all__ = ["setup", "CONFIG_NAME"]


def setup(shim_file: str) -> tuple[dict, dict]:
    """Guard this ComfyUI process; returns its ``(NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS)``."""
    import comfy.model_management
    import execution
    import nodes
    import server

    from guard.adapters.comfyui import early_abort, gate, node_classes, outputs, workflow

    runtime = Runtime.load(Path(shim_file).resolve().parent, device=str(comfy.model_management.get_torch_device()))

    def wrap_outputs(class_types) -> None:  # custom nodes load after this pack: wrapped when first used
        for kind in class_types:
            cls = nodes.NODE_CLASS_MAPPINGS.get(kind)
            if cls is not None:
                outputs.wrap(runtime, cls)

    server.PromptServer.instance.add_on_prompt_handler(workflow.handler(runtime, wrap_outputs))
    gate.install(runtime)
    early_abort.install(runtime)
    _track_requests(execution.PromptExecutor, runtime)
    wrap_outputs(nodes.NODE_CLASS_MAPPINGS)
    return node_classes.build(runtime)


def _track_requests(executor, runtime: Runtime) -> None:
    """Make the executing workflow's id and account known to the load and output guards."""
    original = executor.execute_async
    if getattr(original, "_diffusion_guard", False):
        return

    @functools.wraps(original)
    async def execute_async(self, prompt, prompt_id, extra_data={}, execute_outputs=[]):  # noqa: B006 (ComfyUI's signature)
        account = (extra_data or {}).get(runtime.account_key)
        token = current.set(Request(prompt_id, str(account) if account not in (None, "") else None))
        try:
            return await original(self, prompt, prompt_id, extra_data, execute_outputs)
        finally:
            current.reset(token)

    execute_async._diffusion_guard = True
    executor.execute_async = execute_async
