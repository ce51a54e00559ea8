"""The `mambaverse` command: LightningCLI (omegaconf parser mode) plus `mambaverse models`.

    mambaverse fit --config genomics/configs/demo.yaml        train from a YAML config
    mambaverse validate|test|predict --config ... --ckpt_path ...
    mambaverse models [PATTERN]                                 list the named model presets
"""
from __future__ import annotations

import sys

USAGE_EXTRA = (" Configs are YAML (omegaconf interpolation allowed); examples live in each domain's configs/ folder,"
               " e.g. genomics/configs/. `mambaverse models [PATTERN]` lists the model presets a config can name.")


def _models(argv):
    from .registry import _PRESETS, list_models

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
        print(f"{name:<{width}}  {(_PRESETS[name].__doc__ or '').strip()}")
    return 0


def main(argv=None):
    given = argv
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "models":
        return _models(argv[1:])
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    from .errors import MambaverseError

    class MambaverseCLI(LightningCLI):
        def init_parser(self, **kwargs):
            parser = super().init_parser(**kwargs)
            parser.description = (parser.description or "") + USAGE_EXTRA
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
