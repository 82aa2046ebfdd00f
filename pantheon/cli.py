"""The ``pantheon`` command line.

``pantheon demo`` runs the main job offline on a generated phantom with the bundled demo weights;
each model adds its own commands (``pantheon nemesis``, ``pantheon tooth``, ``pantheon pni``: the
``cli`` of its plug-in, :mod:`pantheon.plugins`); ``pantheon batch`` runs any model's batch
pipeline over a folder. An expected failure prints one sentence on stderr and exits with status 2,
leaving no output behind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import List, Optional

from . import __version__
from .cliargs import IMAGE_FORMATS, POSITIVE, add_input_limits, device_name
from .cliargs import case_folder as case_folder_of
from .errors import Cancelled, PantheonError
from .plugins import plugins

EXIT_OK, EXIT_CASES_FAILED, EXIT_ERROR, EXIT_CANCELLED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``kill``), handled as Ctrl-C is: clean up, then say what was written."""


class TqdmProgress:
    """A progress callback drawing one tqdm bar (on stderr), silent with ``quiet``."""

    def __init__(self, quiet: bool = False, desc: str = ""):
        self.bar = None
        # no bar when stderr is a file or a pipe: it would only fill logs with carriage returns
        if not quiet and _is_terminal(sys.stderr):
            from tqdm import tqdm
            self.bar = tqdm(total=1000, desc=desc, unit="‰",
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}",
                            file=sys.stderr, leave=False)

    def __call__(self, fraction: float, message: str = "") -> None:
        if self.bar is None:
            return
        self.bar.n = int(round(1000 * fraction))
        if message:
            self.bar.set_postfix_str(message[:60], refresh=False)
        self.bar.refresh()

    def close(self):
        bar, self.bar = self.bar, None
        if bar is not None:
            try:
                bar.close()
            except (OSError, ValueError):  # stderr already closed (a broken pipe): nothing to clear
                pass


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2) like every other error."""

    def error(self, message):
        found = re.match(r"argument ([^:]+): (.*)", message, re.S)
        if found:
            name = found.group(1).split("/")[-1]  # "-o/--output" -> "--output"
            words = found.group(2).strip()
            message = f"{name} {words}" if words.startswith("must") else f"{name}: {words}"
        message = " ".join(message.split()).rstrip(".")
        _say(f"pantheon: error: {message} (see '{self.prog} --help').")
        self.exit(EXIT_ERROR)


# ---------------------------------------------------------------------------- batch
def cmd_batch(args, progress):
    """Run one pipeline over a folder or CSV of images (see pantheon.batch)."""
    from .batch import run_batch
    from .batch.pipelines import get_pipeline
    # the options the chosen pipeline declares (each model adds its own to the parser)
    declared = get_pipeline(args.pipeline).options
    options = {k: getattr(args, k) for k in declared if getattr(args, k, None) is not None}
    from .batch.ray_executor import ray_address
    if args.ray_address and args.engine != "ray":
        raise PantheonError("--ray-address needs --engine ray.")
    with ray_address(args.ray_address):
        summary = run_batch(args.pipeline, args.input, args.output, args.workers, options, fmt=args.format,
                            seg_nrrd=args.seg_nrrd, retry_failed=args.retry_failed, engine=args.engine,
                            quiet=args.quiet)
    failed, cases, done = summary["failed"], summary["cases"], summary["done"]
    if not failed:
        return summary
    # the exit status says whether cases failed: 1 some (the rest are written), 2 all (or --strict)
    first = summary["failed_cases"][0]
    why = f"{first['case_id']}: {str(first['error'] or 'unknown error').rstrip('.')}"
    if done == 0:
        raise PantheonError(f"{failed} of {cases} cases failed (e.g. {why}); no case output was written, only "
                            f"logs and reports in {summary['output']} (see {summary['summary']}).")
    msg = (f"{failed} of {cases} cases failed (e.g. {why}; see {summary['summary']}); the {done} done "
           f"{'is' if done == 1 else 'are'} written in {summary['output']}.")
    if args.strict:
        raise PantheonError(msg)
    _say(f"pantheon: warning: {msg}")
    return dict(summary, _exit_status=EXIT_CASES_FAILED)


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pantheon", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pantheon {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for plugin in plugins():
        add_commands = plugin.load("cli")
        if add_commands is not None:
            add_commands(sub)
    from .batch.pipelines import pipeline_names
    p = sub.add_parser("batch", help="run a pipeline over a folder or CSV of images (resumable)",
                       description="Batch pseudo-labelling: one output folder per case, manifest.json, logs/, "
                                   "summary.csv and index.html in --output. A rerun skips finished cases and "
                                   "redoes failed or unfinished ones.")
    p.add_argument("pipeline", choices=pipeline_names(), help="batch pipeline")
    p.add_argument("--input", required=True, help="folder of images / DICOM series subfolders, or a CSV with an "
                                                  "'image' column (optional 'case_id')")
    add_input_limits(p, None)
    p.add_argument("-o", "--output", required=True, help="batch output folder")
    p.add_argument("--workers", type=POSITIVE, default=1,
                   help="worker processes, each loads the model once (default 1)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="executor: local process pool (default) or ray (Ray actors; pip install 'pantheon[ray]')")
    p.add_argument("--ray-address", metavar="ADDR", help="--engine ray: the Ray cluster to join, e.g. auto or "
                                                         "ray://head:10001 (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--device", default="auto", type=device_name, help="auto, cpu, cuda or cuda:N (default auto)")
    for plugin in plugins():  # each model's own options (weights, thresholds...)
        add_options = plugin.load("batch_cli")
        if add_options is not None:
            add_options(p)
    p.add_argument("--format", default="nii.gz", choices=IMAGE_FORMATS, help="image format (default nii.gz)")
    p.add_argument("--seg-nrrd", action=argparse.BooleanOptionalAction, default=True,
                   help="also write label outputs as Slicer .seg.nrrd (default on)")
    p.add_argument("--retry-failed", action=argparse.BooleanOptionalAction, default=True,
                   help="redo cases that failed in an earlier run (default on)")
    p.add_argument("--strict", action="store_true",
                   help="any failed case is an error: status 2 and no summary on stdout (default: status 1 with a "
                        "warning when some cases failed, 2 when all did)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_batch, interrupt_note=None)
    from .batch.review_cli import add_review_commands
    add_review_commands(sub)
    from .synth.cli import add_commands as add_phantom_commands
    add_phantom_commands(sub)
    return parser


# ---------------------------------------------------------------------------- running a command


def _say(line: str) -> None:
    """One line on stderr; silent when stderr itself is a closed pipe."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        _silence(sys.stderr)


def _silence(stream) -> None:
    """Point a closed pipe's file descriptor at /dev/null, so that Python's own flush at exit does not
    print "Exception ignored ... BrokenPipeError" (the recipe of Python's signal documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _output_folders(args) -> List[Path]:
    """The folders a command will write (its -o, or what its ``default_outputs`` names without one)."""
    out = getattr(args, "output", None)
    if not out and getattr(args, "default_outputs", None) is not None:
        return list(args.default_outputs(args))
    return [Path(out)] if out else []


def _output_problem(folder: Path) -> Optional[str]:
    """Why ``folder`` cannot be the output folder (one sentence), or None. Checked before any work, so
    an hour of computation never ends in "permission denied"; nothing is created here."""
    folder = folder.expanduser()
    try:
        if folder.exists() and not folder.is_dir():
            return f"The output {folder} is a file, not a folder; give -o a folder (it is created when missing)."
        existing = folder
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            return f"The output folder {folder} cannot be created: {existing} is a file."
    except OSError as exc:
        return f"The output folder {folder} cannot be reached ({exc.strerror or exc})."
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "into" if existing == folder else f"the folder {folder} in"
        return f"Cannot write {what} {existing}: permission denied or a read-only file system; choose another -o."
    return None


def _os_error_sentence(exc: OSError) -> str:
    import errno
    name = exc.filename or ""
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
              errno.EPERM: "operation not permitted"}.get(exc.errno, (exc.strerror or str(exc) or type(exc).__name__))
    where = f" ({name})" if name else ""
    return f"Could not read or write a file{where}: {reason[0].lower()}{reason[1:]}."


def _interrupted_message(args, exc: BaseException) -> str:
    word = "terminated" if isinstance(exc, Terminated) or isinstance(getattr(exc, "original", None), Terminated) \
        else "interrupted"
    if getattr(exc, "user_message", None):  # the batch says what it wrote
        return f"pantheon: {word}: {exc.user_message}"
    note = getattr(args, "interrupt_note", None) if args is not None else None
    return f"pantheon: {word}; {note}." if note else f"pantheon: {word}."


def _sentence(exc: BaseException) -> str:
    """The error's one line: first line only, PyTorch's weights_only advice replaced by ours."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "weights_only" in text or "torch.load" in text:
        try:
            from .models.checkpoints import without_torch_advice
            text = without_torch_advice(text)
        except Exception:  # noqa: BLE001 - no torch here: keep the text
            pass
    return text


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 some batch cases failed, 2 error, 130 Ctrl-C,
    143 SIGTERM). Whatever happens, the user sees at most one line on stderr, never a traceback
    (``--debug`` re-raises)."""
    args, progress, phase = None, None, "parse"
    case_folder, written = None, False
    previous_term = _on_sigterm()
    previous_show = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        phase = "run"
        for folder in _output_folders(args):
            problem = _output_problem(folder)
            if problem:
                raise PantheonError(problem)
        # a folder holding another case's results is refused, and locked, before any work
        case_folder = case_folder_of(args)
        if case_folder is not None:
            args.output_folder = case_folder.open()
        quiet = getattr(args, "quiet", False) or args.command == "batch"  # batch draws its own per-case bar
        progress = TqdmProgress(quiet, desc=getattr(args, "action", args.command))
        t0 = time.perf_counter()
        summary = dict(args.func(args, progress) or {})
        written = True
        if case_folder is not None:
            case_folder.close()
        progress.close()
        status = summary.pop("_exit_status", EXIT_OK)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        phase = "print"
        print(json.dumps(summary, indent=2))
        sys.stdout.flush()  # a closed pipe fails here, inside this handler, not at interpreter exit
        return status
    except BrokenPipeError:
        if progress is not None:
            progress.close()
        _silence(sys.stdout)
        if phase == "print":
            outs = ", ".join(str(p) for p in _output_folders(args))
            _say("pantheon: error: standard output was closed before the summary was printed (broken pipe)"
                 + (f"; everything in {outs} was written before that." if outs else "."))
        else:
            _say("pantheon: error: an output stream was closed (broken pipe).")
        return EXIT_ERROR
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
        if progress is not None:
            progress.close()
        _say(_interrupted_message(args, exc))
        terminated = isinstance(exc, Terminated) or isinstance(getattr(exc, "original", None), Terminated)
        return EXIT_TERMINATED if terminated else EXIT_CANCELLED
    except Cancelled:
        if progress is not None:
            progress.close()
        _say("pantheon: cancelled; no output was written.")
        return EXIT_CANCELLED
    except (PantheonError, ValueError) as exc:
        if progress is not None:
            progress.close()
        if args is not None and args.debug:
            raise
        _say(f"pantheon: error: {_sentence(exc)}")
        return EXIT_ERROR
    except MemoryError:
        if progress is not None:
            progress.close()
        _say("pantheon: error: out of memory; try a smaller --batch-size, --precision bf16 or a GPU.")
        return EXIT_ERROR
    except OSError as exc:  # a full disk, a folder that became read-only...: staged outputs were rolled back
        if progress is not None:
            progress.close()
        if args is not None and args.debug:
            raise
        _say(f"pantheon: error: {_os_error_sentence(exc)}")
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, the traceback on request
        if progress is not None:
            progress.close()
        if args is not None and args.debug:
            raise
        _say(f"pantheon: error: unexpected {type(exc).__name__}: {_sentence(exc).rstrip('.')} "
             "(a bug; rerun with --debug for the traceback and report it).")
        return EXIT_ERROR
    finally:
        if case_folder is not None:
            case_folder.close(failed=not written)  # the lock goes; folders made for nothing too
        warnings.showwarning = previous_show
        _restore_sigterm(previous_term)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """A warning is one line too (Python's format adds the file name and a line of source code)."""
    text = " ".join(str(message).split())
    if "weights_only" in text:  # torch.load's chatter about a bad file; the error that follows says it plainly
        return
    _say(f"pantheon: warning: {text}")


def _raise_terminated(signum, frame):
    raise Terminated()


def _on_sigterm():
    """SIGTERM raises Terminated in the main thread, so staged outputs and the batch clean up as on
    Ctrl-C (the default action would kill us mid-write, leaving hidden staging folders)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is None:
        return None  # not ours to change (another thread, or a handler installed outside Python)
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except (ValueError, OSError):
        return None


def _restore_sigterm(previous) -> None:
    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except (ValueError, OSError):
            pass


if __name__ == "__main__":
    sys.exit(main())
