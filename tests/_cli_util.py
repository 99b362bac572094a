"""One in-process run of the ``dsr-deploy`` command line for tests: (exit code, stdout, stderr)."""

from __future__ import annotations

from dsr_deploy.cli import main


def run_cli(capsys, *argv):
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err
