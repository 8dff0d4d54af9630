"""The app's command line: Hydra overrides (`sample.shift=10`) and the flag spellings of the seed documents and the
official Wan `generate.py` (`--sample_shift 10 --sample_guide_scale 8 --offload_model True --t5_cpu`), accepted as
aliases of the config keys. Whatever the command line sets, the UI shows locked: the command line wins.

Aliases are applied to the composed config (not turned into Hydra override strings), so a prompt with quotes,
commas or `=` needs no Hydra quoting. A key given twice (an alias and an override, or twice) is a usage error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import config as config_mod

# flag -> (config key, type); bool flags take an optional value (`--t5_cpu`, `--t5_cpu false`)
ALIASES: dict[str, tuple[str, type]] = {
    "--task": ("model", str),
    "--ckpt_dir": ("ckpt_dir", str),
    "--prompt": ("prompt", str),
    "--image": ("image", str),
    "--size": ("sample.size", str),
    "--frame_num": ("sample.frame_num", int),
    "--sample_steps": ("sample.steps", int),
    "--sample_shift": ("sample.shift", float),
    "--sample_guide_scale": ("sample.guide_scale", float),
    "--sample_solver": ("sample.solver", str),
    "--base_seed": ("sample.seed", int),
    "--cfg_truncate_steps": ("sample.cfg_truncate_steps", int),
    "--cfg_truncate_high_noise_steps": ("sample.cfg_truncate_high_noise_steps", int),
    "--offload_model": ("offload_model", bool),
    "--t5_cpu": ("t5_cpu", bool),
    "--ulysses_size": ("parallel.ulysses", int),
    "--ring_size": ("parallel.ring", int),
    "--dit_fsdp": ("parallel.fsdp", bool),
    "--t5_fsdp": ("parallel.t5_fsdp", bool),
}
# the official str2bool words
BOOL_WORDS = {"yes": True, "true": True, "t": True, "y": True, "1": True,
              "no": False, "false": False, "f": False, "n": False, "0": False}
RANDOM_SEED = -1   # --base_seed -1 / sample.seed=-1: a seed drawn per generation (as the official CLI does)


@dataclass
class CommandLine:
    overrides: list[str] = field(default_factory=list)    # Hydra overrides, passed to Hydra as they are
    values: dict[str, object] = field(default_factory=dict)  # config key -> value of an alias
    given: dict[str, str] = field(default_factory=dict)   # config key -> how the command line said it
    random_seed: bool = False                             # the seed was set to -1: draw one per generation
    help: bool = False


def _typed(flag: str, key: str, typ: type, text: str):
    try:
        return typ(text)
    except ValueError:
        what = {int: "an integer", float: "a number"}[typ]
        raise ValueError(f"{flag}={text!r}: must be {what} (it sets {key})") from None


def _note(cl: CommandLine, key: str, how: str) -> None:
    if key in cl.given:
        raise ValueError(f"{key}: set twice on the command line ({cl.given[key]} and {how}); give it once")
    cl.given[key] = how


def parse(argv: list[str]) -> CommandLine:
    """argv (without the program) -> CommandLine; ValueError names the flag or key and the rule."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    cl, i = CommandLine(), 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-h", "--help"):
            cl.help = True
            continue
        if arg in ("-m", "--multirun"):
            raise ValueError(f"{arg}: the UI serves one configuration; sweeps (-m) are for launch/run.py")
        if not arg.startswith("--"):
            config_mod.check_overrides([arg])
            o = OverridesParser.create().parse_overrides([arg])[0]
            if o.key_or_group == "sample.seed" and o.value() == RANDOM_SEED:
                cl.random_seed = True                   # not a config value (the schema wants >= 0)
            else:
                cl.overrides.append(arg)
            _note(cl, o.key_or_group, arg)
            continue
        flag, eq, text = arg.partition("=")
        if flag not in ALIASES:
            raise ValueError(f"{flag}: unknown flag; the app takes Hydra overrides (key=value, e.g. sample.shift=10)"
                             f" and these flags: {', '.join(ALIASES)}")
        key, typ = ALIASES[flag]
        if typ is bool:
            if not eq and i < len(argv) and argv[i].lower() in BOOL_WORDS:
                text, eq = argv[i], "="
                i += 1
            if eq and text.lower() not in BOOL_WORDS:
                raise ValueError(f"{flag}={text!r}: must be one of {', '.join(BOOL_WORDS)} (it sets {key})")
            value = BOOL_WORDS[text.lower()] if eq else True
            how = f"{flag} {text}" if eq else flag
        else:
            if not eq:
                if i >= len(argv) or argv[i].startswith("--"):
                    raise ValueError(f"{flag}: needs a value (it sets {key})")
                text = argv[i]
                i += 1
            value = _typed(flag, key, typ, text) if typ is not str else text
            how = f"{flag} {text}"
        _note(cl, key, how)
        if key == "model":
            cl.overrides.append(f"model={text}")         # a config group: Hydra selects it
        elif key == "sample.seed" and value == RANDOM_SEED:
            cl.random_seed = True
        else:
            cl.values[key] = value
    return cl


def _set(data: dict, key: str, value) -> None:
    *path, last = key.split(".")
    for p in path:
        data = data.setdefault(p, {})
    data[last] = value


def compose(cl: CommandLine) -> config_mod.RunConfig:
    """The run config: conf/ + Hydra overrides, then the aliases' values; checked by the schema (no rows needed:
    the form makes them). For a two-expert model `--sample_guide_scale` sets both experts, as the official CLI
    does (its float fills the (low, high) tuple), unless the high-noise scale is given too."""
    from ..models.registry import get_model
    data = config_mod.compose_data(cl.overrides)
    values = dict(cl.values)
    if "sample.guide_scale" in values and "sample.guide_scale_high" not in cl.given \
            and "--sample_guide_scale" in cl.given.get("sample.guide_scale", "") \
            and get_model(data["model"]["name"]).is_moe:
        values["sample.guide_scale_high"] = values["sample.guide_scale"]
        cl.given["sample.guide_scale_high"] = cl.given["sample.guide_scale"]
    for key, value in values.items():
        _set(data, key, value)
    cfg = config_mod.from_dict(data, rows=False)
    if cfg.manifest is not None:
        raise ValueError(f"manifest={cfg.manifest!r}: the UI makes one video per request from its form; run "
                         "manifests with launch/run.py")
    return cfg


def usage() -> str:
    return ("usage: python launch/app.py model=MODEL ckpt_dir=DIR [key=value ...] [--flag value ...]\n"
            "       wan-dist torchrun --standalone --nproc_per_node N launch/app.py ... parallel.ulysses=N\n\n"
            "Hydra overrides (README 'Configuration keys'; ui.lang, ui.host, ui.port for the app) and these flag\n"
            "spellings of the official Wan CLI and the seed documents:\n"
            + "\n".join(f"  {flag:34s} {key}" + (" (optional value: true/false)" if typ is bool else "")
                        for flag, (key, typ) in ALIASES.items())
            + "\n\nA setting given on the command line is shown in the UI with that value, locked.")
