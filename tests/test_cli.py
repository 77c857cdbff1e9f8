"""The `panovlm` command: sub-commands dispatched from one table and imported only when they run, a clear message
for a sub-command this installation lacks, console scripts that point at real functions, help for every command,
and the example scripts as thin calls of the same functions."""

import ast
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from modeling_panovlm import cli
from modeling_panovlm.cli import COMMANDS, load_command


ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def console_scripts() -> dict[str, str]:
    """`{name: "module:function"}` from setup.py's entry_points."""
    for node in ast.walk(ast.parse((ROOT / "setup.py").read_text())):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            scripts = ast.literal_eval(node.value)["console_scripts"]
            return dict(tuple(part.strip() for part in line.split("=")) for line in scripts)
    raise AssertionError("setup.py declares no entry_points")


def test_panovlm_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as error:
        cli.main(["--help"])
    assert error.value.code == 0
    text = capsys.readouterr().out
    assert all(f"  {name} " in text for name in COMMANDS) and "panovlm COMMAND --help" in text
    with pytest.raises(SystemExit) as error:
        cli.main(["trian"])
    assert error.value.code == 2 and "invalid choice: 'trian'" in capsys.readouterr().err


def test_console_scripts_point_at_the_sub_commands():
    scripts = console_scripts()
    assert scripts.pop("panovlm") == "modeling_panovlm.cli:main"
    assert scripts == {f"panovlm-{name}": f"{module}:main" for name, (module, _) in COMMANDS.items()}
    for name in COMMANDS:
        command = load_command(name)
        assert callable(command.main) and callable(command.build_parser), name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_sub_command_help_documents_every_flag_with_an_example(name, capsys):
    parser = load_command(name).build_parser()
    assert [a.option_strings for a in parser._actions if a.option_strings and not (a.help or "").strip()] == []
    with pytest.raises(SystemExit) as error:
        cli.main([name, "--help"])
    assert error.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: panovlm {name}" in text and "examples:" in text


def test_python_m_cli_and_the_example_scripts_are_the_same_commands():
    for name in ("train", "demo"):
        via_cli = subprocess.run([sys.executable, "-m", "modeling_panovlm.cli", name, "--help"], capture_output=True, text=True, env=ENV, timeout=120)
        via_example = subprocess.run([sys.executable, ROOT / "examples" / f"{name}.py", "--help"], capture_output=True, text=True, env=ENV, timeout=120)
        assert via_cli.returncode == via_example.returncode == 0, via_cli.stderr + via_example.stderr
        assert via_cli.stdout == via_example.stdout and f"usage: panovlm {name}" in via_cli.stdout
    source = (ROOT / "examples" / "train.py").read_text()
    assert "from modeling_panovlm.cli.train import main" in source and len(source.splitlines()) < 25


def test_console_verbosity_follows_flags_transformers_and_the_process_rank(monkeypatch, tmp_path, capsys):
    import transformers

    from modeling_panovlm.cli import console

    monkeypatch.delenv("RANK", raising=False)
    transformers.utils.logging.set_verbosity_info()  # what TRANSFORMERS_VERBOSITY=info sets at import
    assert console.configure_logging() == logging.INFO
    transformers.utils.logging.set_verbosity_warning()
    assert console.configure_logging() == logging.WARNING
    assert console.configure_logging("debug") == logging.DEBUG
    assert console.configure_logging("info", quiet=True) == logging.ERROR
    with pytest.raises(ValueError, match="log level must be one of"):
        console.configure_logging("loud")

    log = console.attach_log_file(tmp_path / "run.log")
    console.configure_logging("warning")
    ours, theirs = logging.getLogger("modeling_panovlm.training.runner"), logging.getLogger("transformers.trainer")
    ours.info("detail of ours")
    theirs.info("detail of theirs")
    ours.warning("a warning of ours")
    warnings.warn_explicit("library deprecation", FutureWarning, "/site-packages/lib/module.py", 1)
    warnings.warn_explicit("ours", UserWarning, str(ROOT / "modeling_panovlm" / "x.py"), 1)
    err = capsys.readouterr().err
    assert "a warning of ours" in err and "UserWarning: ours" in err
    assert "detail of" not in err and "library deprecation" not in err
    assert console.library_warnings_logged() == 1
    text = log.read_text()
    assert all(f in text for f in ("detail of ours", "detail of theirs", "a warning of ours", "library deprecation"))

    monkeypatch.setenv("RANK", "1")  # another process of a distributed launch: warnings only, no log file
    assert console.configure_logging("debug") == logging.WARNING
    assert console.attach_log_file(tmp_path / "rank1.log") is None and not (tmp_path / "rank1.log").exists()
