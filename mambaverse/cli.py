"""The `mambaverse` command: LightningCLI (omegaconf parser mode), `mambaverse models`, and plugin commands.

    mambaverse fit --config genomics/configs/demo.yaml        train from a YAML config
    mambaverse validate|test|predict --config ... --ckpt_path ...
    mambaverse models [PATTERN]                                 list the named model presets
    mambaverse NAME [ARGS...]                                   a command declared by an installed package

Other subcommands are declared by packages (ours or third-party) in their pyproject.toml::

    [project.entry-points."mambaverse.commands"]
    generate = "mambaverse.audio.generate:main"       # main(argv: list[str]) -> int (exit status)

They are looked up with importlib.metadata and imported only when called, so this module imports no
domain package (and no Lightning unless fit/validate/test/predict runs).
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
import zipfile

from .registry import declared_entry_points

COMMAND_GROUP = "mambaverse.commands"
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")  # never shadowed by a plugin command
USAGE_EXTRA = (" Configs are YAML (omegaconf interpolation allowed); examples live in each domain's configs/ folder,"
               " e.g. genomics/configs/. `mambaverse models [PATTERN]` lists the model presets a config can name.")


def plugin_commands() -> dict:
    """``{name: EntryPoint}`` of the subcommands declared under ``mambaverse.commands`` (nothing imported)."""
    return declared_entry_points(COMMAND_GROUP)


def _run_plugin(ep, argv) -> int:
    from .errors import MambaverseError

    try:
        command = ep.load()
    except (ImportError, AttributeError) as err:
        print(f"mambaverse: error: command {ep.name!r} ({ep.value}) cannot be loaded: {err}", file=sys.stderr)
        return 2
    if not callable(command):
        print(f"mambaverse: error: command {ep.name!r}: {ep.value} is not callable; expected main(argv) -> int",
              file=sys.stderr)
        return 2
    try:
        status = command(list(argv))
    except MambaverseError as err:
        print(f"mambaverse {ep.name}: error: {err}", file=sys.stderr)
        return 2
    return int(status or 0)


_MODELS_HELP = "List the named model presets matching a glob PATTERN (default '*')."


def _command_help(ep) -> str:
    """One line about a plugin command (imports it): a module's ``main`` is described by the module's docstring,
    another function (one command among other code) by its own."""
    try:
        command = ep.load()
    except Exception as err:  # noqa: BLE001 - a broken third-party command must not break --help
        return f"({ep.value}: cannot be loaded: {type(err).__name__})"
    module = sys.modules.get(getattr(command, "__module__", ""))
    docs = [getattr(module, "__doc__", None), command.__doc__]
    if getattr(command, "__name__", "main") != "main":
        docs.reverse()
    doc = next((d.strip() for d in docs if d and d.strip()), "")
    first = doc.splitlines()[0].replace("``", "") if doc else ""
    return f"{first} (`mambaverse {ep.name} --help`)" if first else f"`mambaverse {ep.name} --help`"


def _models(argv):
    from .registry import get_preset, list_models

    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: mambaverse models [PATTERN]\n\n{_MODELS_HELP}")
        return 0
    pattern = argv[0] if argv else "*"
    names = list_models(pattern)
    if not names:
        print(f"no preset matches {pattern!r}", file=sys.stderr)
        return 1
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {(get_preset(name).__doc__ or '').strip()}")
    return 0


# Framework messages that are noise on every call (advertising tips, TPU lines, upstream deprecations).
_NOISE_INFO = ("💡 Tip:", "TPU available:", "Loading `train_dataloader` to estimate")
_NOISE_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)` is deprecated.*", r".*does not have many workers.*",
                   r".*LightningCLI's args parameter is intended to run from within Python.*")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_NOISE_INFO)


def quiet_framework() -> None:
    """Silence Lightning's tips and known-noise warnings (idempotent); real warnings still show."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    for pattern in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def check_ckpt_path(path) -> None:
    """Raise a one-line MambaverseError unless ``path`` is a readable PyTorch checkpoint file with a state_dict.

    Catches a missing path, a folder, an empty or truncated file and a file of another kind before Lightning
    does (its errors are tracebacks). Read with ``weights_only=True`` and ``mmap``: nothing is unpickled beyond
    tensors and containers, and the tensors are not read into memory.
    """
    import torch

    from .errors import ConfigError

    p = os.path.expanduser(str(path))
    if not os.path.exists(p):
        raise ConfigError(f"ckpt_path: {p} not found; expected a Lightning checkpoint (.ckpt) file")
    if os.path.isdir(p):
        raise ConfigError(f"ckpt_path: {p} is a folder; expected a Lightning .ckpt file (a save_pretrained folder is "
                          f"for pretrained_ckpt / from_pretrained)")
    size = os.path.getsize(p)
    if size == 0:
        raise ConfigError(f"ckpt_path: {p} is empty (0 bytes); expected a Lightning .ckpt file (was its writer killed?)")
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            raise ConfigError(f"ckpt_path: {p} is truncated or corrupt ({size} bytes, no readable zip directory); "
                              f"expected a complete Lightning .ckpt file") from None
        if not any(n.endswith("data.pkl") for n in names):
            raise ConfigError(f"ckpt_path: {p} is a zip file but not a PyTorch checkpoint (no data.pkl)")
    elif not head.startswith(b"\x80"):  # neither torch.save's zip nor its legacy pickle format
        raise ConfigError(f"ckpt_path: {p} is not a PyTorch checkpoint (starts with {head!r}); expected a Lightning "
                          f".ckpt file (safetensors weights are for from_pretrained)")
    try:
        ckpt = torch.load(p, weights_only=True, map_location="cpu", mmap=head.startswith(b"PK"))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ConfigError(f"ckpt_path: cannot read {p} ({type(exc).__name__}: {first}); expected a Lightning .ckpt "
                          f"file") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConfigError(f"ckpt_path: {p} holds no 'state_dict'; expected a checkpoint written by Lightning "
                          f"(ModelCheckpoint, trainer.save_checkpoint)")


def check_model_matches(model, path) -> None:
    """Raise a one-line ConfigError if the checkpoint's tensors do not fit ``model`` (another architecture)."""
    import torch

    from .errors import ConfigError

    if not getattr(model, "strict_loading", True):
        return
    p = os.path.expanduser(str(path))
    state = torch.load(p, weights_only=True, map_location="cpu", mmap=True)["state_dict"]
    own = model.state_dict()
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    parts = ([f"shapes (checkpoint vs config): {', '.join(shapes[:8])}" + (" ..." if len(shapes) > 8 else "")]
             if shapes else []) + \
        ([f"missing: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else "")] if missing else []) + \
        ([f"unexpected: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else "")] if unexpected else [])
    if parts:
        raise ConfigError(f"ckpt_path: {path} is a checkpoint of another model than the config builds "
                          f"({'; '.join(parts)}); use the config it was trained with")


# Model arguments that change how a model is optimised, regularised or where it writes, never which weights it has:
# a run resumed or evaluated from a checkpoint may give other values (the config's are used; for fit, the restored
# optimiser takes them too: mambaverse.training.fault_tolerance). Any other model argument is the architecture.
RUN_ONLY_HPARAMS = frozenset({
    "lr", "weight_decay", "betas", "eps", "warmup_steps", "min_lr_ratio", "label_smoothing", "dropout",
    "decoder_dropout", "mask_prob", "grad_checkpointing", "output_dir", "overlay_count", "class_names",
    "pretrained_ckpt", "pretrained_allow_partial"})
_RUN_ONLY_HPARAMS = RUN_ONLY_HPARAMS  # the old private name


def _plain(value):
    if isinstance(value, dict) or hasattr(value, "as_dict"):
        value = value.as_dict() if hasattr(value, "as_dict") else value
        return {k: _plain(v) for k, v in value.items() if k not in ("_instantiator", "_class_path")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def check_config_matches(model_cfg, path) -> dict:
    """Compare the config's model with the checkpoint's saved hyperparameters (LightningCLI would otherwise quietly
    build the checkpoint's model and use its output folder).

    Returns ``{key: config value}`` of the :data:`RUN_ONLY_HPARAMS` that differ (lr, warmup_steps, output_dir, ...),
    which the run may change. Raises a one-line ConfigError naming every other (architecture) argument that
    differs, with both values, and a model class that differs.
    """
    import torch

    from .errors import ConfigError

    if model_cfg is None:
        return {}
    p = os.path.expanduser(str(path))
    ckpt = torch.load(p, weights_only=True, map_location="cpu", mmap=zipfile.is_zipfile(p))
    saved = ckpt.get("hyper_parameters") or {}
    if not saved:
        return {}
    cfg = _plain(model_cfg)
    diffs, run_only = [], {}
    saved_class = saved.get("_class_path")
    if saved_class and cfg.get("class_path") and saved_class != cfg["class_path"]:
        diffs.append(f"class_path: {saved_class} in the checkpoint vs {cfg['class_path']} in the config")
    args = cfg.get("init_args") or {}
    for key, value in _plain(saved).items():
        if key.startswith("_") or key not in args:
            continue
        if args[key] != value and not (args[key] in (None, {}, []) and value in (None, {}, [])):
            if key in RUN_ONLY_HPARAMS:
                run_only[key] = args[key]
            else:
                diffs.append(f"{key}: {value!r} in the checkpoint vs {args[key]!r} in the config")
    if diffs:
        raise ConfigError(f"ckpt_path: {path} was trained with another architecture than the config gives "
                          f"({'; '.join(diffs)}); use the config the checkpoint was trained with (only optimiser and "
                          f"output arguments such as lr, warmup_steps, weight_decay, output_dir may differ)")
    return run_only


def _check_writable(path, key: str) -> None:
    """One line (OutputPathError naming ``key``) unless ``path`` is, or can be made, a writable folder; a probe
    file is made and removed, since ``os.access`` lets root through on read-only and virtual file systems."""
    from .atomic import check_writable_dir

    check_writable_dir(path, key)


def _compact(message: str) -> str:
    """A jsonargparse error (often many indented lines) as one line, dropping its type-union chatter."""
    import re

    drop = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
            "Expected a <class 'NoneType'>")
    keep = [ln.strip().lstrip("- ").strip() for ln in str(message).splitlines()]
    keep = [re.sub(r"Expected a <class '([\w.]+)'>", r"expected \1", ln) for ln in keep if ln and not ln.startswith(drop)]
    return " ".join(" ".join(keep).split())


def _interpolation_error(exc: BaseException) -> str | None:
    """A ``${...}`` given on the command line that names no key reaches us as jsonargparse's many-line union error
    (a config file's is an omegaconf exception): its one line, or None for any other error."""
    import re

    text = str(exc)
    found = re.search(r"(Interpolation key '[^']*' not found)", text)
    if not found:
        return None
    key = re.search(r"full_key:\s*(\S+)", text)
    return f"config{' key ' + repr(key.group(1)) if key else ''}: {found.group(1)}"


def main(argv=None):
    given = argv
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "models":
        return _models(argv[1:])
    commands = {k: v for k, v in plugin_commands().items() if k not in LIGHTNING_COMMANDS}
    if argv and argv[0] in commands:
        return _run_plugin(commands[argv[0]], argv[1:])
    quiet_framework()
    import lightning.pytorch as pl
    from jsonargparse import ArgumentError
    from omegaconf.errors import OmegaConfBaseException
    from lightning.pytorch.cli import LightningCLI

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from .errors import MambaverseError
    from .training.fault_tolerance import SIGTERM_STATUS, install, sigterm_checkpoint

    trainers = []  # the CLI object is lost when its run raises; the trainer is kept here
    _LIGHTNING_HELP = {
        "fit": "Train the model a config describes (resume a run with --ckpt_path .../last.ckpt).",
        "validate": "Run one evaluation pass over the validation set.",
        "test": "Evaluate a checkpoint (--ckpt_path) on the test set and write its metrics.",
        "predict": "Run a checkpoint (--ckpt_path) on data and write its predictions (e.g. embeddings).",
    }

    class MambaverseCLI(LightningCLI):
        def instantiate_trainer(self, **kwargs):
            # exact resume (random state), a resumable last.ckpt on SIGTERM, atomic checkpoint files
            trainers.append(install(super().instantiate_trainer(**kwargs)))
            return trainers[-1]

        def init_parser(self, **kwargs):
            parser = super().init_parser(**kwargs)
            parser.description = (parser.description or "") + USAGE_EXTRA
            others = ",".join(["models", *sorted(commands)])
            parser.usage = f"mambaverse [-h] [-c CONFIG] {{fit,validate,test,predict,{others}}} ..."
            return parser

        def _add_subcommands(self, parser, **kwargs):
            # `models` and the plugin commands, listed with Lightning's own (main() runs them before this parser)
            super()._add_subcommands(parser, **kwargs)
            from jsonargparse import ArgumentParser

            action = parser._subcommands_action
            for choice in action._choices_actions:  # Lightning's lines are its docstrings cut mid-sentence
                choice.help = _LIGHTNING_HELP.get(choice.dest, choice.help)
            for name, text in [("models", _MODELS_HELP), *((n, _command_help(commands[n])) for n in sorted(commands))]:
                action.add_subcommand(name, ArgumentParser(prog=f"mambaverse {name}", description=text), help=text)

        def _parse_ckpt_path(self):
            # Lightning would read the checkpoint with a traceback on a bad file, then silently replace the
            # config's model arguments with the checkpoint's: check the file, and refuse a model that differs.
            sub = self.config.get("subcommand")
            ckpt = self.config[sub].get("ckpt_path") if sub else None
            changed = {}
            if ckpt:
                check_ckpt_path(ckpt)
                changed = check_config_matches(self.config[sub].get("model"), ckpt)
            super()._parse_ckpt_path()
            if changed:  # the config's optimiser/output arguments win over the checkpoint's
                model = self.config[sub]["model"]
                args = model.get("init_args")
                if args is None:
                    args = model.get("dict_kwargs")
                for key, value in changed.items():
                    args[key] = value
                print(f"mambaverse {sub}: from {ckpt} with the config's " + ", ".join(
                    f"{k}={v!r}" for k, v in changed.items()) + " (the checkpoint's differ)", file=sys.stderr)

        def before_instantiate_classes(self):
            # before the Trainer exists, so a bad folder is one line, not after Lightning's device lines
            sub = self.config.get("subcommand")
            root = (self.config[sub].get("trainer") or {}).get("default_root_dir") if sub else None
            if root:
                _check_writable(root, "trainer.default_root_dir")

        def _check_run(self, subcommand):
            cfg = self.config.get(subcommand, {})
            ckpt = cfg.get("ckpt_path")
            root = getattr(self.trainer, "default_root_dir", None)
            if root:
                _check_writable(root, "trainer.default_root_dir")
            # folders the run writes into, checked before any data is prepared or any step is run
            hparams = getattr(self.model, "hparams", None) or {}
            out = hparams.get("output_dir") or getattr(self.model, "output_dir", None)
            if out:
                _check_writable(out, "model.output_dir")
            cache = getattr(self.datamodule, "cache_dir", None)
            if cache:
                _check_writable(cache, "data.cache_dir")
            if ckpt:
                check_model_matches(self.model, ckpt)
            elif subcommand in ("test", "validate"):
                print(f"mambaverse {subcommand}: warning: no --ckpt_path; evaluating the weights the config builds "
                      f"(untrained unless it loads pretrained ones)", file=sys.stderr)

        def before_fit(self):
            self._check_run("fit")

        def before_validate(self):
            self._check_run("validate")

        def before_test(self):
            self._check_run("test")

        def before_predict(self):
            self._check_run("predict")

    try:
        MambaverseCLI(
            pl.LightningModule, pl.LightningDataModule,
            subclass_mode_model=True, subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False,
                           "description": "mambaverse: Mamba models for DNA, audio and images."},
            trainer_defaults={"logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                         "init_args": {"save_dir": "runs"}}},
            save_config_kwargs={"overwrite": True},
            args=given, auto_configure_optimizers=False,
        )
    except SIGTERMException:  # Lightning stopped after the current step; exit non-zero, say where to resume
        saved = sigterm_checkpoint(trainers[-1] if trainers else None)
        where = (f"; resumable checkpoint {saved} (resume: add --ckpt_path {saved} to the same command)" if saved
                 else "; no checkpoint written (only a fit that has trained a step writes one)")
        print(f"mambaverse: stopped by SIGTERM{where}", file=sys.stderr)
        return SIGTERM_STATUS
    except MambaverseError as err:
        print(f"mambaverse: error: {err}", file=sys.stderr)
        return 2
    except OmegaConfBaseException as err:  # e.g. a ${...} interpolation naming a key that is not there
        first = (str(getattr(err, "msg", None) or err).strip().splitlines() or [""])[0]
        key = getattr(err, "full_key", None)
        print(f"mambaverse: error: config{' key ' + repr(key) if key else ''}: {first}", file=sys.stderr)
        return 2
    except ArgumentError as err:  # a bad option or config value: the message, not 50 lines of usage first
        sub = next((a for a in argv if a in LIGHTNING_COMMANDS), None)
        message = _compact(err)
        configs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
        configs += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
        # PyYAML parses the file's text, so its messages name "<unicode string>" instead of the file
        message = message.replace('"<unicode string>"', repr(configs[0]) if len(configs) == 1 else "a --config file")
        print(f"mambaverse: error: {message} (`mambaverse {sub or ''} --help`".replace("  ", " ")
              + " lists the options)", file=sys.stderr)
        return 2
    except Exception as exc:  # jsonargparse wraps errors raised while instantiating the model or data
        cause = exc
        while cause is not None and not isinstance(cause, MambaverseError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            print(f"mambaverse: error: {cause}", file=sys.stderr)
            return 2
        interpolation = _interpolation_error(exc)
        if interpolation is None:
            raise
        print(f"mambaverse: error: {interpolation}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
