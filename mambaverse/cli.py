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

import sys

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


def _models(argv):
    from .registry import get_preset, list_models

    if argv and argv[0] in ("-h", "--help"):
        print("usage: mambaverse models [PATTERN]\n\nList the named model presets matching a glob PATTERN (default '*').")
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


def main(argv=None):
    given = argv
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "models":
        return _models(argv[1:])
    commands = {k: v for k, v in plugin_commands().items() if k not in LIGHTNING_COMMANDS}
    if argv and argv[0] in commands:
        return _run_plugin(commands[argv[0]], argv[1:])
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from .errors import MambaverseError
    from .training.fault_tolerance import SIGTERM_STATUS, install, sigterm_checkpoint

    trainers = []  # the CLI object is lost when its run raises; the trainer is kept here

    class MambaverseCLI(LightningCLI):
        def instantiate_trainer(self, **kwargs):
            # exact resume (random state), a resumable last.ckpt on SIGTERM, atomic checkpoint files
            trainers.append(install(super().instantiate_trainer(**kwargs)))
            return trainers[-1]

        def init_parser(self, **kwargs):
            parser = super().init_parser(**kwargs)
            extra = USAGE_EXTRA
            if commands:
                extra += f" Other commands (`mambaverse NAME --help`): {', '.join(sorted(commands))}."
            parser.description = (parser.description or "") + extra
            return parser

    try:
        MambaverseCLI(
            pl.LightningModule, pl.LightningDataModule,
            subclass_mode_model=True, subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf", "description": "mambaverse: Mamba models for DNA, audio and images."},
            trainer_defaults={"logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                         "init_args": {"save_dir": "runs"}}},
            save_config_kwargs={"overwrite": True},
            args=given, auto_configure_optimizers=False,
        )
    except SIGTERMException:  # Lightning stopped after the current step; exit non-zero, say where to resume
        saved = sigterm_checkpoint(trainers[-1] if trainers else None)
        where = (f"; resumable checkpoint {saved} (resume: add --ckpt_path {saved} to the same command)" if saved
                 else "; nothing trained yet, no checkpoint written")
        print(f"mambaverse: stopped by SIGTERM{where}", file=sys.stderr)
        return SIGTERM_STATUS
    except MambaverseError as err:
        print(f"mambaverse: error: {err}", file=sys.stderr)
        return 2
    except Exception as exc:  # jsonargparse wraps errors raised while instantiating the model or data
        cause = exc
        while cause is not None and not isinstance(cause, MambaverseError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        print(f"mambaverse: error: {cause}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
