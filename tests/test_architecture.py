"""The package's shape: what the core imports, how plugins and commands are found, the layer contract."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

HEAVY = ("lightning", "pytorch_lightning", "pyfaidx", "sklearn", "timm")


def _python(code: str, **env_extra) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)


def test_core_preset_imports_no_domain_and_no_heavy_dependency():
    """create_model of a core preset loads no domain plugin; an unknown name loads them on demand."""
    done = _python(f"""
        import json, sys
        import mambaverse
        mambaverse.create_model("causal_tiny")
        first = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} or m.startswith("mambaverse.genomics"))
        mambaverse.create_model("caduceus_ps_dna_small")  # a genomics preset: found through the plugin entry point
        print(json.dumps({{"first": first, "genomics": "mambaverse.genomics" in sys.modules}}))
    """)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["first"] == [], seen
    assert seen["genomics"]


def _fake_distribution(root: Path, body: str) -> Path:
    """A real installed distribution on sys.path: a module and a .dist-info declaring one mambaverse command."""
    (root / "mv_extra_cmd.py").write_text(textwrap.dedent(body))
    info = root / "mv_extra_cmd-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mv-extra-cmd\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mambaverse.commands]\nhello = mv_extra_cmd:main\n"
                                           "broken = mv_extra_cmd:missing\n")
    return root


def test_cli_dispatches_declared_commands_lazily(tmp_path):
    _fake_distribution(tmp_path, """
        import sys
        from mambaverse.errors import ShapeError

        def main(argv):
            if argv == ["bad"]:
                raise ShapeError("hello: input x has shape (3,), expected (2,)")
            print("hello", " ".join(argv), "lightning" in sys.modules)
            return 3
    """)
    env = {"PYTHONPATH": str(tmp_path)}
    run = lambda *args: subprocess.run([sys.executable, "-m", "mambaverse.cli", *args], capture_output=True, text=True,
                                       env={**__import__("os").environ, **env})
    done = run("hello", "a", "b")
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == "hello a b False"  # the command ran without Lightning being imported
    done = run("hello", "bad")
    assert done.returncode == 2 and done.stderr.strip() == ("mambaverse hello: error: hello: input x has shape (3,), "
                                                            "expected (2,)")
    done = run("broken")
    assert done.returncode == 2 and "command 'broken' (mv_extra_cmd:missing) cannot be loaded" in done.stderr
    done = run("--help")
    assert done.returncode == 0 and "hello" in done.stdout and "fit" in done.stdout


REPO = Path(__file__).resolve().parents[1]


def _installed_layout(root: Path) -> Path:
    """The package tree as installed: pyproject's package-dir maps genomics/, audio/, vision/, kernels/ to
    mambaverse.<name>, which lint-imports cannot see from the repository's own folders."""
    import shutil
    import tomllib

    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(mapping.items(), key=lambda kv: kv[0].count(".")):
        target = root.joinpath(*package.split("."))
        shutil.copytree(REPO / folder, target, dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if n == "__pycache__" or
                                                 (not n.endswith(".py") and not (Path(d) / n).is_dir())])
    return root


def test_import_contracts_hold(tmp_path):
    """`lint-imports` (import-linter, contracts in .importlinter): layers point down, domains independent."""
    layout = _installed_layout(tmp_path / "src")
    lint = Path(sys.executable).with_name("lint-imports")

    def run(config=".importlinter"):
        return subprocess.run([str(lint), "--config", str(REPO / config), "--no-cache"], cwd=layout,
                              capture_output=True, text=True,
                              env={**__import__("os").environ, "PYTHONPATH": str(layout)})

    for config in (".importlinter", ".importlinter-domains"):
        done = run(config)
        assert done.returncode == 0, config + ": " + done.stdout[-4000:] + done.stderr[-2000:]
        assert "0 broken" in done.stdout
    # the contract has teeth: an op that reaches up into the backbones breaks it
    (layout / "mambaverse" / "ops" / "_upward.py").write_text("from mambaverse.backbones import CausalBackbone\n")
    done = run()
    assert done.returncode != 0 and "mambaverse.ops._upward -> mambaverse.backbones" in done.stdout
