"""The texts in a model file's training metadata worth screening, with where they came from.

kohya's sd-scripts records its dataset in ``ss_*`` keys (tag frequencies per image folder,
folder names such as ``10_ultraman``, class tokens), and the modelspec keys carry the
title, description, trigger phrase and tags. Each text is yielded with evidence that says
which key held it, which tag, how often it was used and what share of the images it covers.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator, Mapping

_REPEATS = re.compile(r"^\d+_")
_NAMED_KEYS = ("ss_output_name", "ss_training_comment", "ss_sd_model_name", "modelspec.title",
               "modelspec.description", "modelspec.trigger_phrase", "modelspec.tags", "modelspec.author")
_STRUCTURED = {"ss_tag_frequency", "ss_dataset_dirs", "ss_datasets"}
MAX_TEXT = 10_000
#: More distinct tags than this cannot be screened in bounded time (a large real dataset has a
#: few thousand); such a file is refused, with this reason, rather than screened in part.
MAX_TAGS = 20_000


def metadata_limits(metadata: Mapping[str, str]) -> list[str]:
    """Why this metadata cannot be screened whole (each a reason to refuse the file), if it cannot."""
    problems = []
    frequency = _tag_frequency(metadata)
    tags = sum(map(len, frequency.values()))
    if tags > MAX_TAGS:
        problems.append(f"training metadata lists {tags} distinct tags (limit {MAX_TAGS}): too many to screen")
    longest = max((len(t) for folder in frequency.values() for t in folder), default=0)
    if longest > MAX_TEXT:
        problems.append(f"a training tag of {longest} characters (limit {MAX_TEXT}): too long to screen")
    for key, value in metadata.items():
        if _screened_as_text(key, value) and len(value) > MAX_TEXT:
            problems.append(f"metadata {key!r} holds {len(value)} characters of text (limit {MAX_TEXT}): "
                            "too long to screen whole")
    return problems


def metadata_texts(metadata: Mapping[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(text, evidence)`` for every screenable text in ``metadata``."""
    images = _images_per_dir(metadata)
    frequency = _tag_frequency(metadata)
    for folder, tags in frequency.items():
        total = images.get(folder) or max(tags.values(), default=0) or 1
        for tag, count in sorted(tags.items(), key=lambda kv: -kv[1]):  # most-used tag first
            yield tag, {"key": "ss_tag_frequency", "dir": folder, "tag": tag, "count": count,
                        "share": round(min(1.0, count / total), 4)}
    everything = sorted({tag for tags in frequency.values() for tag in tags})
    if everything:  # indirect anchors are spread over several tags
        yield ", ".join(everything)[:MAX_TEXT], {"key": "ss_tag_frequency", "tags": "all"}
    for folder in images:
        yield _REPEATS.sub("", folder).replace("_", " "), {"key": "ss_dataset_dirs", "dir": folder}
    for subset in _subsets(metadata):
        for field in ("class_tokens", "image_dir"):
            if isinstance(subset.get(field), str) and subset[field]:
                yield subset[field], {"key": "ss_datasets", "field": field}
    for key in _NAMED_KEYS:
        if metadata.get(key):
            yield metadata[key][:MAX_TEXT], {"key": key}  # longer values are refused (metadata_limits)
    for key, value in metadata.items():
        if key not in _NAMED_KEYS and _screened_as_text(key, value):
            yield value[:MAX_TEXT], {"key": key}  # longer values are refused (metadata_limits)


def _screened_as_text(key: str, value: str) -> bool:
    # kohya's other ss_* keys and modelspec's other keys are parameters; any other key (an
    # uploader's "trigger", "description", a hub's own keys) is free text.
    if key in _NAMED_KEYS:
        return bool(value)
    if key in _STRUCTURED or key.startswith(("ss_", "modelspec.")):
        return False
    return any(ch.isalpha() for ch in value[:200])


def _json(metadata: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(metadata.get(key) or "null")
    except (json.JSONDecodeError, RecursionError):
        return None


def _tag_frequency(metadata: Mapping[str, str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    sources = [_json(metadata, "ss_tag_frequency")]
    datasets = _json(metadata, "ss_datasets")
    if isinstance(datasets, list):
        sources += [d.get("tag_frequency") for d in datasets if isinstance(d, dict)]
    for source in sources:
        if not isinstance(source, dict):
            continue
        for folder, tags in source.items():
            if isinstance(tags, dict):
                bucket = out.setdefault(str(folder), {})
                for tag, count in tags.items():
                    if isinstance(count, (int, float)) and not isinstance(count, bool):
                        bucket[str(tag).strip()] = bucket.get(str(tag).strip(), 0) + int(count)
    return out


def _images_per_dir(metadata: Mapping[str, str]) -> dict[str, int]:
    dirs = _json(metadata, "ss_dataset_dirs")
    if not isinstance(dirs, dict):
        return {}
    out = {}
    for folder, info in dirs.items():
        count = info.get("img_count") if isinstance(info, dict) else None
        out[str(folder)] = int(count) if isinstance(count, (int, float)) and not isinstance(count, bool) else 0
    return out


def _subsets(metadata: Mapping[str, str]) -> list[dict]:
    datasets = _json(metadata, "ss_datasets")
    subsets = []
    if isinstance(datasets, list):
        for d in datasets:
            if isinstance(d, dict) and isinstance(d.get("subsets"), list):
                subsets += [s for s in d["subsets"] if isinstance(s, dict)]
    return subsets
