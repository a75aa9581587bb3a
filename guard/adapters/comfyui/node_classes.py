"""Nodes for workflow authors, and the node a refused workflow is replaced by. Each is a few
lines around one facade call; the guard decides."""

from __future__ import annotations

import json

from guard.adapters.comfyui import gate, outputs
from guard.adapters.comfyui.runtime import Runtime, current


def build(runtime: Runtime) -> tuple[dict, dict]:
    """``NODE_CLASS_MAPPINGS`` and ``NODE_DISPLAY_NAME_MAPPINGS`` for this runtime."""
    import folder_paths
    import nodes

    def guard_or_fail():
        if runtime.guard is None:
            raise gate.GuardRefusedLoad(runtime.problem or "diffusion-guard is not loaded")
        return runtime.guard

    class DiffusionGuardRefusal:
        """What a refused workflow becomes: validation fails with the guard's reason."""

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"reason": ("STRING", {"default": ""})}}

        RETURN_TYPES = ()
        FUNCTION = "refuse"
        OUTPUT_NODE = True
        CATEGORY = "diffusion-guard"

        @classmethod
        def VALIDATE_INPUTS(cls, reason):
            return reason or "refused by diffusion-guard"

        def refuse(self, reason):
            raise gate.GuardRefusedLoad(reason or "refused by diffusion-guard")

    class GuardPromptCheck:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"text": ("STRING", {"multiline": True})}}

        RETURN_TYPES = ("STRING",)
        FUNCTION = "check"
        CATEGORY = "diffusion-guard"

        def check(self, text):
            verdict = guard_or_fail().check_prompt(text, account=current.get().account)
            if verdict.blocked:
                raise gate.GuardRefusedLoad("diffusion-guard blocked this prompt: " +
                                            ", ".join(f"{f.subject} ({f.signal.value})" for f in verdict.findings))
            return (text,)

    class GuardImageCheck:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE",)}}

        RETURN_TYPES = ("IMAGE", "STRING")
        RETURN_NAMES = ("images", "verdicts")
        FUNCTION = "check"
        CATEGORY = "diffusion-guard"

        def check(self, images):
            guard_or_fail()
            checked, verdicts = outputs.check_images(runtime, images, "GuardImageCheck")
            return checked, json.dumps(verdicts, ensure_ascii=False)

    class GuardLoraLoader(nodes.LoraLoader):
        CATEGORY = "diffusion-guard"

        def load_lora(self, model, clip, lora_name, strength_model, strength_clip):
            gate.check_file(runtime, folder_paths.get_full_path_or_raise("loras", lora_name), "GuardLoraLoader")
            return super().load_lora(model, clip, lora_name, strength_model, strength_clip)

    class GuardCheckpointLoader(nodes.CheckpointLoaderSimple):
        CATEGORY = "diffusion-guard"

        def load_checkpoint(self, ckpt_name):
            gate.check_file(runtime, folder_paths.get_full_path_or_raise("checkpoints", ckpt_name),
                            "GuardCheckpointLoader")
            return super().load_checkpoint(ckpt_name)

    classes = {"DiffusionGuardRefusal": DiffusionGuardRefusal, "GuardPromptCheck": GuardPromptCheck,
               "GuardImageCheck": GuardImageCheck, "GuardLoraLoader": GuardLoraLoader,
               "GuardCheckpointLoader": GuardCheckpointLoader}
    names = {"DiffusionGuardRefusal": "Refused by diffusion-guard", "GuardPromptCheck": "Guard Prompt Check",
             "GuardImageCheck": "Guard Image Check", "GuardLoraLoader": "Guard LoRA Loader",
             "GuardCheckpointLoader": "Guard Checkpoint Loader"}
    return classes, names
