"""Every prompt argument a pipeline takes, read from its ``__call__`` signature, screened
element by element before any GPU work.

``prompt``, ``prompt_2`` (SDXL's second CLIP, SD3's, Flux's T5 prompt), ``prompt_3`` (SD3's
T5): whichever the pipeline has. Negatives are context for their prompts, never a reason to
drop one: a missing or short negative list leaves the prompt screened without a negative.
A call with no prompt text at all (embeddings only) gets the recorded "unscreened" verdict,
and the policy's ``[generation] unscreened_prompt`` says whether it may run.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from guard.facade import Guard
from guard.verdict import Surface, Verdict

_PROMPT = re.compile(r"prompt(_\d+)?")


def prompt_names(parameters: Sequence[str]) -> list[str]:
    """The prompt arguments among a ``__call__``'s parameters, ``prompt`` first."""
    return sorted((p for p in parameters if _PROMPT.fullmatch(p)), key=lambda p: (p != "prompt", p))


class NotText(Exception):
    pass


def texts(value: Any) -> list[str]:
    """A prompt argument as its texts: ``None``, a str, or a list/tuple of str."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise NotText(type(value).__name__)


def negative_for(name: str, arguments: Mapping[str, Any]) -> Any:
    """The negative that goes with prompt argument ``name`` (``negative_prompt_2`` falls back
    to ``negative_prompt``, as diffusers does)."""
    negative = arguments.get(f"negative_{name}")
    return arguments.get("negative_prompt") if negative is None and name != "prompt" else negative


def _nth(negative: Any, i: int) -> str | None:
    if isinstance(negative, str):
        return negative
    if isinstance(negative, (list, tuple)) and i < len(negative) and isinstance(negative[i], str):
        return negative[i]
    return None


def screen(guard: Guard, account: str | None, arguments: Mapping[str, Any],
           names: Sequence[str]) -> dict[str, list[Verdict]]:
    """One verdict per prompt text, by argument; refusals for arguments that are not text."""
    verdicts: dict[str, list[Verdict]] = {}
    for name in names:
        try:
            found = texts(arguments.get(name))
        except NotText as kind:
            verdicts[name] = [guard.refuse(name, Surface.PROMPT, f"{name} is a {kind}, not text or a list of texts: "
                                           "the guard cannot screen it", account)]
            continue
        negative = negative_for(name, arguments)
        verdicts[name] = [guard.check_prompt(text, negative=_nth(negative, i), account=account)
                          for i, text in enumerate(found)]
    if not any(verdicts.values()):
        given = sorted(k for k, v in arguments.items() if k.endswith("prompt_embeds") and v is not None)
        reason = f"called with {', '.join(given) or 'no prompt'}: the prompt text was not available"
        verdicts["<embeds>"] = [guard.unscreened_prompt(reason, account)]
    return verdicts


def steered(arguments: Mapping[str, Any], verdicts: Mapping[str, list[Verdict]]) -> dict[str, Any]:
    """The negative-prompt arguments to set so that each steered prompt's names go into
    the negative that diffusers pairs with it (a str stays a str)."""
    changes: dict[str, Any] = {}
    for name, found in verdicts.items():
        if not any(v.steer for v in found):
            continue
        negative = negative_for(name, arguments)
        combined = [", ".join(x for x in (_nth(negative, i), v.steer) if x) for i, v in enumerate(found)]
        changes[f"negative_{name}"] = combined[0] if isinstance(arguments.get(name), str) else combined
    return changes


def negatives_apply(arguments: Mapping[str, Any], parameters: Sequence[str]) -> bool:
    """Whether this call uses its negative prompts at all (classifier-free guidance on):
    steering through them means nothing otherwise."""
    if "true_cfg_scale" in parameters:  # Flux: guidance is distilled; negatives need true CFG
        return float(arguments.get("true_cfg_scale") or 0) > 1
    return float(arguments.get("guidance_scale") or 0) > 1
