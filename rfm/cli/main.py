"""`rfm` command line: one subcommand per module in rfm.cli (info, data, train, eval, compare, card, average, export,
serve, fleet, adapt)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rfm.cli.errors import CLIError
from rfm.files import process_user
from rfm.install import pip_install
from rfm.processes import WorkerDied
from rfm.train.launch import first_process  # the environment only: no torch
from rfm.train.stop import TrainingStopped  # signal and threading only: no torch

# Idle OpenMP threads sleep instead of spinning: with spinning, two torch processes on a small CPU slow each other
# down by 10-100x (measured: 7 ms -> 1 s per chunk). Must be set before torch is imported; users can override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# subcommand -> module with add_parser(subparsers) and run(args) -> int
COMMANDS = {
    "info": "rfm.cli.info",
    "data": "rfm.cli.data",
    "train": "rfm.cli.train",
    "eval": "rfm.cli.eval",
    "compare": "rfm.cli.compare",
    "card": "rfm.cli.card",
    "average": "rfm.cli.average",
    "export": "rfm.cli.export",
    "serve": "rfm.cli.serve",
    "fleet": "rfm.cli.fleet",
    "adapt": "rfm.cli.adapt",
    "cache": "rfm.cli.cache",
}


# the install extra each command needs (pyproject.toml); rfm without extras is the robot-side client
EXTRAS = {"serve": "serve", "train": "train", "data": "train,sim", "info": "train", "average": "train",
          "export": "export", "fleet": "sim", "eval": "sim,train", "adapt": "sim,train", "card": "train",
          "compare": "train", "cache": "serve"}
INSTALL_NOTES = {"serve": " (to serve an `rfm export` directory, without torch: the extras edge,server)"}



class Parser(argparse.ArgumentParser):
    """argparse, with a bad option or value reported in one line like every other CLI error (argparse prints the
    whole usage block first, which buries the line that says what was wrong)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rfm", description="Robot foundation model: data, train, eval, export, serve.")
    parser.add_argument("--version", action="version", version=f"rfm {importlib.import_module('rfm').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"rfm {args.command}: error: {e}", file=sys.stderr)
        return 2
    # config/checkpoint/data errors carry the file and field; FileExistsError: an output a writer will not replace
    except (FileNotFoundError, FileExistsError, ValueError, WorkerDied) as e:
        print(f"rfm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:  # an output directory of another user's (a volume mounted into a container)
        print(f"rfm {args.command}: error: {e.strerror}: {e.filename} (this process runs as {process_user()})",
              file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # a package of an extra this install lacks (pyproject.toml)
        extra = EXTRAS.get(args.command, "all")
        print(f"rfm {args.command}: error: {e}; this command needs {pip_install(extra)}"
              f"{INSTALL_NOTES.get(args.command, '')}", file=sys.stderr)
        return 2
    except TrainingStopped as e:  # SIGTERM / Ctrl-C during training: the checkpoint of that step is saved
        if not first_process():  # a multi-process run: rank 0 reports the stop, and a launcher would kill it
            return 0  # (mid-report) as soon as another rank exited with an error
        print(f"rfm {args.command}: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `rfm data info DIR | head`: the reader left; not an error of the command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return 0
    except Exception as e:
        if not out_of_space(e):
            raise
        print(f"rfm {args.command}: error: no space left on the device ({str(e)[:300]}). What was saved before is "
              f"kept (rfm writes whole files and directories or nothing); free space (a checkpoint save needs about "
              f"twice a checkpoint's size) and run it again (rfm train --resume continues a run)", file=sys.stderr)
        return 2


def out_of_space(e: BaseException) -> bool:
    """A full disk or quota, as an OSError or as the message of a library's own error (safetensors, PyAV)."""
    import errno

    return getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(e)


if __name__ == "__main__":
    # run the package's module, not this __main__ copy, so subcommands' CLIError is the class caught above
    from rfm.cli.main import main as package_main

    sys.exit(package_main())
