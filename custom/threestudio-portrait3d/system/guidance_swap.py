"""Another threestudio guidance with one override, ``system.guidance_type=...``, checked before any work.

Our configs write ``system.guidance`` for ``portrait3d-sd-guidance`` (threestudio's
``stable-diffusion-guidance`` with the official CFG form, the same settings; the official SDS settings).
:func:`adapt_guidance_config` carries those settings over to the guidance a user picks: under that
guidance's own name for them, left out (with a line saying so) where it has no such setting, and a
VSD LoRA that follows the guidance's model unless one is named. :func:`check_guidance_swap` then
checks, in the system's ``configure`` (before the initialisation's text-to-image and inversion), that
``system.loss`` weighs every loss the guidance returns and that a guidance with trained parameters
is optimised, and lists everything missing in one line.
"""

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from omegaconf import DictConfig, OmegaConf

DEFAULT_GUIDANCE = "portrait3d-sd-guidance"  # the guidance our configs' system.guidance is written for

# a setting of (portrait3d-)stable-diffusion-guidance under another guidance's name for the same thing: "sds" and
# "dreamfusion" both weigh by w(t) = 1 - alpha_bar_t (threestudio models/guidance/
# stable_diffusion_guidance.py and stable_diffusion_unified_guidance.py, forward)
RENAMED_VALUES: Dict[Tuple[str, str], Dict[Any, Any]] = {
    ("stable-diffusion-unified-guidance", "weighting_strategy"): {"sds": "dreamfusion"},
}

# ProlificDreamer's learning rate of the LoRA (threestudio configs/prolificdreamer.yaml)
LORA_LR = 0.0001


def _losses_sd(cfg) -> Set[str]:
    return {"sds"} | ({"sds_img"} if cfg.use_img_loss else set())


def _losses_unified(cfg) -> Set[str]:
    return (
        {"sd"}
        | ({"sd_img"} if cfg.use_img_loss else set())
        | ({"train_phi"} if cfg.guidance_type == "vsd" else set())
    )


def _losses_vsd(cfg) -> Set[str]:
    return {"vsd", "lora"} | ({"vsd_img"} if cfg.use_img_loss else set())


# the losses (``loss_<name>`` in its output, weighed by ``system.loss.lambda_<name>``) each of
# threestudio's text guidances returns, from its effective config (models/guidance/*.py, forward)
GUIDANCE_LOSSES: Dict[str, Callable[[Any], Set[str]]] = {
    "portrait3d-sd-guidance": _losses_sd,  # a stable-diffusion-guidance (guidance/portrait3d_guidance.py)
    "stable-diffusion-guidance": _losses_sd,
    "deep-floyd-guidance": lambda cfg: {"sds"},
    "stable-diffusion-sdi-guidance": lambda cfg: {"sdi"},
    "stable-diffusion-unified-guidance": _losses_unified,
    "stable-diffusion-vsd-guidance": _losses_vsd,
}

# guidances with parameters of their own to train (VSD's LoRA, the unified guidance's phi in VSD mode)
TRAINED: Dict[str, Callable[[Any], bool]] = {
    "stable-diffusion-vsd-guidance": lambda cfg: True,
    "stable-diffusion-unified-guidance": lambda cfg: cfg.guidance_type == "vsd",
}


def _fields(config_cls) -> Set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(config_cls)}


def adapt_guidance_config(
    guidance_type: str, guidance: Mapping, find: Callable[[str], Any]
) -> Tuple[DictConfig, List[str]]:
    """``system.guidance`` for ``guidance_type`` (``find``: threestudio.find) and the lines that say
    what was carried over differently. The settings of :data:`DEFAULT_GUIDANCE` the chosen guidance
    does not have are left out; other unknown keys stay, so that the guidance's own config refuses
    them (a misspelt key)."""
    cfg = OmegaConf.to_container(OmegaConf.create(guidance), resolve=True) if guidance else {}
    if guidance_type == DEFAULT_GUIDANCE:
        return OmegaConf.create(cfg), []
    notes = []
    target = _fields(find(guidance_type).Config)
    for key in list(cfg):
        renamed = RENAMED_VALUES.get((guidance_type, key), {})
        if key in target and cfg[key] in renamed:
            notes.append(
                f"system.guidance.{key}={cfg[key]} is {renamed[cfg[key]]!r} in {guidance_type} (the same setting)"
            )
            cfg[key] = renamed[cfg[key]]
        elif key not in target and key in _fields(find(DEFAULT_GUIDANCE).Config):
            notes.append(f"system.guidance.{key}={cfg[key]} left out: {guidance_type} has no such setting")
            del cfg[key]
    if "pretrained_model_name_or_path_lora" in target and "pretrained_model_name_or_path_lora" not in cfg:
        model = cfg.get("pretrained_model_name_or_path")
        if model:
            cfg["pretrained_model_name_or_path_lora"] = model
            notes.append(
                f"system.guidance.pretrained_model_name_or_path_lora={model} (the guidance's model; "
                "set it to use another)"
            )
    return OmegaConf.create(cfg), notes


def _plural(names: List[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def missing_and_unused(
    loss_cfg: Mapping, returned: Iterable[str], own: Iterable[str]
) -> Tuple[List[str], List[str]]:
    """The ``lambda_*`` keys ``system.loss`` lacks for the losses ``returned`` (by the guidance) and
    ``own`` (the system's), and the ones nothing uses (names without ``lambda_``)."""
    keys = {str(k)[len("lambda_") :] for k in (loss_cfg or {}) if str(k).startswith("lambda_")}
    used = set(returned) | set(own)
    return sorted(used - keys), sorted(keys - used)


def loss_message(guidance_type: str, returned: Iterable[str], missing: List[str], unused: List[str]) -> str:
    """One line naming every missing and unused ``system.loss.lambda_*``."""
    returned = sorted(returned)
    parts = []
    if missing:
        add = " ".join(f"system.loss.lambda_{n}=1" for n in missing)
        text = (
            f"system.guidance_type={guidance_type} returns {_plural(['loss_' + n for n in returned])}: "
            f"system.loss has no {_plural(['lambda_' + n for n in missing])}; add their weights, e.g. {add}"
        )
        if any(n.endswith("_img") for n in missing):
            text += " (or system.guidance.use_img_loss=false for no image-space loss)"
        parts.append(text)
    if unused:
        parts.append(
            f"{_plural(['system.loss.lambda_' + n for n in unused])} "
            f"{'is' if len(unused) == 1 else 'are'} not used by {guidance_type}"
        )
    return "; ".join(parts)


def check_guidance_swap(
    guidance_type: str,
    guidance: Mapping,
    loss_cfg: Mapping,
    optimizer_params: Optional[Mapping],
    own_losses: Iterable[str],
    find: Callable[[str], Any],
    parse: Callable[[Any, Any], Any],
) -> Tuple[DictConfig, List[str]]:
    """The adapted ``system.guidance`` and the lines to show (what was carried over differently, the
    unused loss weights). Raises one ``ValueError`` line for everything missing. A guidance not in
    :data:`GUIDANCE_LOSSES` has its losses checked at its first step. ``parse``: threestudio's
    ``parse_structured`` (refuses unknown keys)."""
    adapted, notes = adapt_guidance_config(guidance_type, guidance, find)
    effective = parse(find(guidance_type).Config, adapted)
    losses = GUIDANCE_LOSSES.get(guidance_type)
    returned = losses(effective) if losses else None
    problems = []
    unused: List[str] = []
    if returned is not None:
        missing, unused = missing_and_unused(loss_cfg, returned, own_losses)
        if missing:
            problems.append(loss_message(guidance_type, returned, missing, unused))
            unused = []
    trained = TRAINED.get(guidance_type, lambda cfg: False)(effective)
    if trained and not any(str(k).split(".")[0] == "guidance" for k in (optimizer_params or {})):
        problems.append(
            f"{guidance_type} trains parameters of its own: add system.optimizer.params.guidance.lr={LORA_LR} "
            "so that they are optimised and checkpointed"
        )
    if problems:
        raise ValueError("; ".join(problems))
    if unused:
        notes.append(loss_message(guidance_type, returned, [], unused))
    return adapted, notes
