"""Calling a command's `main` in-process, as the shell would, for the CLI tests."""


def run_cli(module, argv: list, capsys) -> tuple[int, str, str]:
    """`module.main(argv)` with every argument as a string: (exit status, stdout, stderr); an argparse error's
    `SystemExit` gives its code."""
    try:
        status = module.main([str(arg) for arg in argv])
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err
