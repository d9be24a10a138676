"""The names params may use for pluggable parts, checked by the schema without importing them: the
rollout engines (name -> where the class lives) and the forms of `reward.function`.
"""
from __future__ import annotations

import math
import re

#: Rollout engines: name -> "module:class" (each class has create(), check() and memory(); see
#: grpolab.rollout.engine). A new engine is its own module plus one line here.
ENGINES = {
    "hf": "grpolab.rollout.engine:HFEngine",
    "vllm": "grpolab.rollout.vllm_engine:VLLMEngine",
}

# `reward.function`: the built-in, `package.module:function` or `path/in/workspace.py:function` (the
# form is checked here; grpolab.reward.functions imports and calls them).
BUILTIN = "builtin:math"
_MODULE_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_FILE_SPEC = re.compile(r"^[^:]+\.py:[A-Za-z_]\w*$")
_RULE = f"must be '{BUILTIN}', 'package.module:function' or 'path/to/file.py:function'"


def function_problems(value) -> list[str]:
    """Why a `reward.function` value is malformed (no import happens here): [] when fine."""
    if isinstance(value, str):
        value = {value: 1.0}
    if not isinstance(value, dict) or not value:
        return [f"{_RULE}, or a non-empty mapping of those to weights"]
    out = []
    for spec, w in value.items():
        if not isinstance(spec, str) or not (spec == BUILTIN or _MODULE_SPEC.match(spec)
                                             or _FILE_SPEC.match(spec)):
            out.append(f"{spec!r} {_RULE}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            out.append(f"weight of {spec!r} is {w!r}: must be a finite number")
    return out
