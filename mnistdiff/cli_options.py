"""Command-line options made from the config dataclasses, as improved-diffusion's ``add_dict_to_argparser`` and
``args_to_dict`` do.

:func:`add_config_arguments` walks a run config's fields (nested config dataclasses flattened) and adds one
``--<field>`` option per field: its type comes from the field's annotation, its help text from the field's
``metadata["help"]`` in :mod:`mnistdiff.config` (the one place help texts live), and a field whose metadata
says ``"cli": False`` (a run's ``kind``) gets none. :func:`config_from_args` applies the options given to a
config. An option left out is absent from the parsed namespace (``argparse.SUPPRESS``), so a profile's or a
resumed run's value stays. The values are checked by the dataclasses alone (their ``__post_init__`` raises
:class:`~mnistdiff.config.ConfigError`, which :func:`option_message` words in terms of the option).

Value syntax: integers, floats and strings as usual; tuples comma-separated (``1,2,2``; ``''`` for the empty
tuple); booleans ``--flag`` / ``--no-flag``; ``none`` for a field that may be ``None``.

The sampler's options (``sample``, ``umap``) and a conditional kind's ``--digit``/``--guidance`` are written out
here too (:func:`add_sampling_options`, :func:`add_guidance_options`): they are a call's arguments, not a config's.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from mnistdiff.config import (
    DEFAULT_AUTOGUIDANCE,
    DEFAULT_AUTOGUIDANCE_INTERVAL,
    DEFAULT_ETA,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    PRECISIONS,
    ConfigError,
)

__all__ = [
    "ConfigOption",
    "config_options",
    "add_config_arguments",
    "config_from_args",
    "option_message",
    "value_parser",
    "option_text",
    "option_argv",
    "NONE_WORD",
    "add_sampling_options",
    "add_guidance_options",
]

#: What a ``None``-able option is given for ``None``.
NONE_WORD = "none"

_T = TypeVar("_T")


@dataclass(frozen=True)
class ConfigOption:
    """One ``--<name>`` option: the field at ``path`` (e.g. ``("train", "epochs")``) of a run config."""

    name: str
    path: tuple[str, ...]
    hint: Any  # the field's annotation, resolved
    help: str
    default: Any  # the field's value in the config the options were made from
    section: str  # the class name of the dataclass holding the field

    @property
    def flag(self) -> str:
        """The option as typed: ``--<name>``."""
        return f"--{self.name}"


def _is_config(value: Any) -> bool:
    """Whether ``value`` is a dataclass instance (a nested config, walked into)."""
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def config_options(cfg: Any) -> list[ConfigOption]:
    """One option per field of config ``cfg`` (an instance, or a class built with its defaults), in field order.

    Fields holding a config dataclass are walked into (their fields become options too); a field with
    ``metadata["cli"] = False`` is left out. Two fields of the same name anywhere in ``cfg`` would make one
    option for two settings: a ``TypeError``.
    """
    if isinstance(cfg, type):
        cfg = cfg()
    options = _walk(cfg, ())
    seen: dict[str, ConfigOption] = {}
    for opt in options:
        if opt.name in seen:
            raise TypeError(
                f"{type(cfg).__name__}: fields {'.'.join(seen[opt.name].path)} and {'.'.join(opt.path)} would "
                f"share the option {opt.flag}"
            )
        seen[opt.name] = opt
    return options


def _walk(cfg: Any, path: tuple[str, ...]) -> list[ConfigOption]:
    """The options of ``cfg``'s fields, nested configs' depth first; ``path`` leads from the run config to ``cfg``."""
    hints = typing.get_type_hints(type(cfg))
    found: list[ConfigOption] = []
    for f in dataclasses.fields(cfg):
        if not f.metadata.get("cli", True):
            continue
        value = getattr(cfg, f.name)
        if _is_config(value):
            found += _walk(value, (*path, f.name))
        else:
            found.append(ConfigOption(f.name, (*path, f.name), hints[f.name], f.metadata.get("help", ""), value,
                                      type(cfg).__name__))
    return found


def _split_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` → ``(X, True)``; ``X`` → ``(X, False)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return rest[0], True
        raise TypeError(f"no command-line syntax for the annotation {hint!r} (only X | None unions)")
    return hint, False


def _parse_bool(text: str) -> bool:
    """``true``/``yes``/``on``/``1`` or ``false``/``no``/``off``/``0``."""
    word = text.strip().lower()
    if word in ("true", "yes", "on", "1"):
        return True
    if word in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _tuple_parser(hint: Any) -> Callable[[str], tuple]:
    """``tuple[X, ...]`` or ``tuple[X, Y]``: comma-separated elements."""
    args = typing.get_args(hint)
    variadic = len(args) == 2 and args[1] is Ellipsis
    parsers = [_scalar_parser(a) for a in (args[:1] if variadic else args)]

    def parse(text: str) -> tuple:
        """The comma-separated elements, each parsed; ``''``: the empty tuple."""
        items = [item.strip() for item in text.split(",")] if text.strip() else []
        if not variadic and len(items) != len(parsers):
            raise argparse.ArgumentTypeError(f"expected {len(parsers)} comma-separated values, got {text!r}")
        return tuple((parsers[0] if variadic else parsers[i])(item) for i, item in enumerate(items))

    parse.__name__ = f"comma-separated {'/'.join(getattr(p, '__name__', 'value') for p in parsers)}"
    return parse


def _scalar_parser(hint: Any) -> Callable[[str], Any]:
    """The parser of a ``None``-less annotation: ``bool``, ``int``, ``float``, ``str`` or a tuple of them."""
    if hint is bool:
        return _parse_bool
    if hint in (int, float, str):
        return hint
    if typing.get_origin(hint) is tuple and typing.get_args(hint):
        return _tuple_parser(hint)
    raise TypeError(f"no command-line syntax for the annotation {hint!r}")


def value_parser(hint: Any) -> Callable[[str], Any]:
    """The ``type=`` argparse calls on an option's text, for a field annotated ``hint``.

    ``int``, ``float``, ``str``, ``bool`` (true/false), tuples of those (comma-separated), and any of them
    ``| None`` (the word ``none``). Another annotation is a ``TypeError`` when the parser is built.
    """
    inner, optional = _split_optional(hint)
    parse = _scalar_parser(inner)
    if not optional:
        return parse

    def parse_optional(text: str) -> Any:
        """``none`` → ``None``, else the value."""
        return None if text.strip().lower() == NONE_WORD else parse(text)

    parse_optional.__name__ = f"{getattr(parse, '__name__', 'value')} (or {NONE_WORD})"
    return parse_optional


def option_text(value: Any) -> str:
    """``value`` as an option's text, so that :func:`value_parser` reads it back (``None`` → ``none``)."""
    if value is None:
        return NONE_WORD
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(option_text(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def _is_flag(opt: ConfigOption) -> bool:
    """A plain ``bool`` field: ``--name`` / ``--no-name`` (a ``bool | None`` one takes true/false/none)."""
    return opt.hint is bool


def option_argv(opt: ConfigOption, value: Any) -> list[str]:
    """The command-line words that set ``opt`` to ``value``: ``["--name", text]``, or ``--name``/``--no-name``."""
    if _is_flag(opt):
        return [opt.flag if value else f"--no-{opt.name}"]
    return [opt.flag, option_text(value)]


def add_config_arguments(parser: argparse.ArgumentParser, cfg: Any,
                         default_label: str = "default") -> list[ConfigOption]:
    """Add one ``--<field>`` option per field of config ``cfg`` (see :func:`config_options`) to ``parser``.

    The options sit in one argument group per dataclass; each help text ends with ``cfg``'s value, labelled
    ``default_label``. Options left out of a command line are absent from the namespace (so
    :func:`config_from_args` keeps the config's values). Returns the options added.
    """
    options = config_options(cfg)
    groups: dict[tuple[str, ...], Any] = {}
    for opt in options:
        key = opt.path[:-1]
        if key not in groups:
            where = f" ({'.'.join(key)})" if key else ""
            groups[key] = parser.add_argument_group(f"{opt.section} options{where}")
        help_ = f"{opt.help} ({default_label}: {option_text(opt.default) or repr('')})".replace("%", "%%")
        if _is_flag(opt):
            groups[key].add_argument(opt.flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                     help=help_)
        else:
            groups[key].add_argument(opt.flag, type=value_parser(opt.hint), default=argparse.SUPPRESS, help=help_)
    return options


def config_from_args(args: argparse.Namespace, cfg: _T) -> _T:
    """``cfg`` with the options given in ``args`` applied; the rest keep ``cfg``'s values.

    The dataclasses check the new values: a bad one raises their :class:`~mnistdiff.config.ConfigError`.
    """
    given = {opt.path: getattr(args, opt.name) for opt in config_options(cfg) if hasattr(args, opt.name)}
    return _replace(cfg, given)


def _replace(cfg: _T, given: dict[tuple[str, ...], Any]) -> _T:
    """``cfg`` with the values at the (relative) field paths in ``given``, nested dataclasses rebuilt first."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        if (f.name,) in given:
            changes[f.name] = given[(f.name,)]
            continue
        inner = {path[1:]: value for path, value in given.items() if len(path) > 1 and path[0] == f.name}
        if inner:
            changes[f.name] = _replace(getattr(cfg, f.name), inner)
    return dataclasses.replace(cfg, **changes) if changes else cfg  # type: ignore[type-var]


def option_message(err: ConfigError) -> str:
    """A config's message about one setting, worded for the command line: ``--<setting> must be ...``."""
    text = str(err)
    if err.setting and text.startswith(err.setting):
        return f"--{text}"
    return text


def add_sampling_options(p: argparse.ArgumentParser, num_samples: int = 64) -> None:
    """The sampler's options (``sample``, ``umap``): :meth:`~mnistdiff.model.DiffusionModel.sample` checks them."""
    from mnistdiff.sampling import OLD_FAST, SAMPLERS
    from mnistdiff.solvers import SPACINGS
    from mnistdiff.training.kinds import KINDS

    diffusion = [k for k in KINDS.values() if k.samples]
    kinds = ", ".join(f"{k.name} {k.config.samplers[0]}" for k in diffusion)
    p.add_argument("--sampler", "--mode", dest="sampler", choices=SAMPLERS, default=None,
                   help="ddim (--steps steps) or ddpm (all T ancestral steps); a flow model: euler or heun (--steps "
                        "steps of its ODE); any model: dpmpp_2m (DPM-Solver++(2M)) or dpmpp_2m_sde (its stochastic "
                        f"twin), and heun (EDM's, Karras sigmas) for a DDPM, LDM or CLDM. Default: {kinds}; --mode is "
                        "its old spelling")
    steps = ", ".join(f"{k.name} {k.config.default_steps}" for k in diffusion)
    p.add_argument("--steps", "--ddim_steps", dest="steps", type=int, default=None,
                   help=f"the sampler's steps (default: for the kind's default sampler, {steps}; for another, "
                        f"{DEFAULT_STEPS}; a distilled student's own); --ddim_steps is its old spelling")
    p.add_argument("--eta", type=float, default=None,
                   help=f"DDIM noise: 0 deterministic, 1 DDPM-like (default {DEFAULT_ETA:g}, a distilled student's 0; "
                        "see chapter 3)")
    p.add_argument("--spacing", choices=SPACINGS, default=None,
                   help="where dpmpp_2m, dpmpp_2m_sde and heun put their steps on a DDPM, LDM or CLDM: karras "
                        "(Karras et al.'s sigmas, the default) or linspace (DDIM's timesteps); see chapter 9")
    p.add_argument("--num_samples", type=int, default=num_samples)
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (as trained, the default), bf16 autocast, fp32_cl or bf16_cl (channels_last), or auto: "
                        "the fastest of the four, measured the first time on this machine and then remembered "
                        "(~/.cache/mnistdiff/choices.json; delete it to measure again)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (pays off on a GPU)")
    p.add_argument("--fast", choices=tuple(OLD_FAST), default=None,
                   help="old spelling: off = --precision fp32, amp = bf16_cl, compile = bf16_cl --compile")


def _interval_default(interval: tuple[float, float] | None) -> str:
    """``--guidance_interval``'s default as its help says it (autoguidance's ``interval``; 0 inf: every step)."""
    if interval is None:
        return "default: every step"
    return f"default with --guide: {' '.join(f'{s:g}' for s in interval)}; 0 inf: every step"


def add_guidance_options(p: argparse.ArgumentParser, conditional: bool) -> None:
    """``--guide``, ``--guidance`` and ``--guidance_interval`` of every kind that samples; ``--digit`` of a
    class-conditional one."""
    if conditional:
        p.add_argument("--digit", action="append", default=None, metavar="D",
                       help="the digit to ask for, 0-9; repeat it for several, or 'all' for 0-9 (one grid row each). "
                            "--num_samples is then per digit. Left out: unconditional samples (no label)")
    p.add_argument("--guide", default=None, metavar="GUIDE",
                   help="autoguidance (Karras et al. 2024): the model file of a worse version of this model (the "
                        "same kind and schedule, trained less), e.g. checkpoints/book/ddpm_guide.safetensors; samples "
                        "follow eps = eps_guide + w*(eps - eps_guide). Unconditional samples only")
    cfg = ("with --digit, the classifier-free weight in eps = eps(no label) + w*(eps(digit) - eps(no label)): 0 "
           f"ignores the digit, 1 is the conditional model (default {DEFAULT_GUIDANCE:g}; a distilled student's, "
           "folded in); " if conditional else "")
    p.add_argument("--guidance", type=float, default=None, metavar="W",
                   help=f"guidance weight w >= 0: {cfg}with --guide, the autoguidance weight (1: this model alone; "
                        f"default {DEFAULT_AUTOGUIDANCE:g})")
    p.add_argument("--guidance_interval", type=float, nargs=2, default=None, metavar=("SIGMA_LO", "SIGMA_HI"),
                   help="guide only at noise levels SIGMA_LO < sigma <= SIGMA_HI, sigma = sqrt((1 - abar_t)/abar_t) "
                        "(inf: no upper end), the model alone elsewhere (Kynkaanniemi et al. 2024); "
                        f"{_interval_default(DEFAULT_AUTOGUIDANCE_INTERVAL)}")
