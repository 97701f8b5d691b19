"""The one mapping between foreign sampler names (A1111, ComfyUI, InvokeAI, Fooocus) and ours.

imagesynth runs every sampler on a Karras sigma schedule, so a foreign name maps to ours when it
is the same integration method, whatever schedule it ran on ("Euler" and "euler_k" both become
`euler`); the foreign schedule, where a file records it separately, is kept by the importer as an
unknown field. Names checked against the sources:

- A1111: `modules/sd_samplers_kdiffusion.py` (labels and their `k_*` aliases; "DPM++ 2M Karras" is
  the pre-1.9 label, later split into "DPM++ 2M" plus a "Schedule type"). "DDPM"/"DDPM Karras" come
  from Forge (`sd_samplers_alter`), an A1111 fork that writes the same infotext.
- ComfyUI: `comfy/samplers.py` KSAMPLER_NAMES (Fooocus writes these same names).
- InvokeAI: `invokeai/backend/stable_diffusion/schedulers/schedulers.py` SCHEDULER_NAME_VALUES
  (v3.1+); the 3.0 names (`k_euler`, `euler_karras`, `k_dpmpp_2`, ...) are accepted as well.
"""

from __future__ import annotations

#: imagesynth's samplers, in the order of `imagesynth.diffusion.samplers.SAMPLERS` (kept literal so
#: reading metadata does not import torch; a test checks the two agree)
IMAGESYNTH_SAMPLERS = ("euler", "heun", "euler_ancestral", "dpmpp_2m", "ddpm")

#: A1111 sampler labels (and the aliases its API accepts) -> imagesynth sampler
A1111_TO_IMAGESYNTH: dict[str, str] = {
    "Euler": "euler",
    "Euler a": "euler_ancestral",
    "Heun": "heun",
    "DPM++ 2M": "dpmpp_2m",
    "DPM++ 2M Karras": "dpmpp_2m",
    "DDPM": "ddpm",
    "DDPM Karras": "ddpm",
    # aliases from the same table: old API calls and scripts use them
    "k_euler": "euler",
    "k_euler_a": "euler_ancestral",
    "k_euler_ancestral": "euler_ancestral",
    "k_heun": "heun",
    "k_dpmpp_2m": "dpmpp_2m",
    "k_dpmpp_2m_ka": "dpmpp_2m",
    "ddpm_karras": "ddpm",
}

#: imagesynth sampler -> the A1111 label that names the same method
IMAGESYNTH_TO_A1111: dict[str, str] = {
    "euler": "Euler",
    "heun": "Heun",
    "euler_ancestral": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "ddpm": "DDPM",
}

#: ComfyUI KSampler `sampler_name` -> imagesynth sampler (ComfyUI already uses our spelling)
COMFYUI_TO_IMAGESYNTH: dict[str, str] = {
    "euler": "euler",
    "euler_ancestral": "euler_ancestral",
    "heun": "heun",
    "dpmpp_2m": "dpmpp_2m",
    "ddpm": "ddpm",
}

#: InvokeAI `scheduler` -> imagesynth sampler; a `_k` suffix only selects Karras sigmas
INVOKEAI_TO_IMAGESYNTH: dict[str, str] = {
    "euler": "euler",
    "euler_k": "euler",
    "euler_a": "euler_ancestral",
    "heun": "heun",
    "heun_k": "heun",
    "dpmpp_2m": "dpmpp_2m",
    "dpmpp_2m_k": "dpmpp_2m",
    "ddpm": "ddpm",
    # InvokeAI 3.0 names, before the 3.1 rename
    "k_euler": "euler",
    "euler_karras": "euler",
    "k_euler_a": "euler_ancestral",
    "k_heun": "heun",
    "k_dpmpp_2": "dpmpp_2m",
    "k_dpmpp_2_karras": "dpmpp_2m",
}


def _lookup_table() -> dict[str, str]:
    """Every known name, case-folded, -> ours; refuses two tools disagreeing about one spelling."""
    table = {name: name for name in IMAGESYNTH_SAMPLERS}
    for mapping in (A1111_TO_IMAGESYNTH, COMFYUI_TO_IMAGESYNTH, INVOKEAI_TO_IMAGESYNTH):
        for foreign, ours in mapping.items():
            key = foreign.casefold()
            if table.setdefault(key, ours) != ours:
                raise AssertionError(f"{foreign!r} maps to both {table[key]} and {ours}")
    return table


_TABLE = _lookup_table()


def to_imagesynth(name: str) -> str | None:
    """Our sampler for an A1111/ComfyUI/InvokeAI/Fooocus (or our own) name; None if none."""
    if not isinstance(name, str):
        return None
    return _TABLE.get(" ".join(name.split()).casefold())
