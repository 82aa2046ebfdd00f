"""What the command modules share: argument types that refuse a bad value in one sentence, the
options every single-case command has (--max-pixels, -o, --overwrite), and writing a command's
output folder all at once. Each model's commands live with the model (``cli`` of its plug-in,
:mod:`pantheon.plugins`); :mod:`pantheon.cli` is the entry point.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

from .errors import PantheonError  # noqa: F401  (commands raise it; re-exported for them)

# What Ctrl-C leaves behind, per command (the ``interrupt_note`` default of a sub-command).
NOTHING_WRITTEN = "no output was written"
RESUMABLE = "the run folder keeps its last checkpoint; rerun the same command to resume"
#: image formats every command writing images offers
IMAGE_FORMATS = ["nii.gz", "nii", "nrrd"]


# ---------------------------------------------------------------------------- argument types
# Each refuses a value with the words argparse prints after the option's name, e.g.
# "--noise must be 0 or more, got -1"; see pantheon.cli's parser.


def _number(text: str, kind=float):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'a whole number' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def int_at_least(minimum: int):
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {text}")
        return value
    parse.__name__ = f"int>={minimum}"
    return parse


def float_between(low: float, high: Optional[float] = None, high_inclusive: bool = True, low_inclusive: bool = True):
    def parse(text: str) -> float:
        value = _number(text, float)
        if (value < low or (not low_inclusive and value == low) or
                (high is not None and (value > high or (not high_inclusive and value == high)))):
            if high is None:
                raise argparse.ArgumentTypeError(f"must be {low:g} or more, got {text}")
            lo = "[" if low_inclusive else "("
            hi = "]" if high_inclusive else ")"
            raise argparse.ArgumentTypeError(f"must be in {lo}{low:g}, {high:g}{hi}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


finite_float = float_between(-math.inf)


POSITIVE, NON_NEGATIVE = int_at_least(1), int_at_least(0)


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def device_name(text: str) -> str:
    """Syntax only (no torch here): whether the device exists is checked when the model loads."""
    name = text.strip().lower()
    if not _DEVICE.fullmatch(name):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N (N = GPU number, from 0), got {text!r}")
    return name


# ---------------------------------------------------------------------------- shared options


def add_input_limits(p: argparse.ArgumentParser, family: Optional[str]) -> None:
    """``--max-pixels``: the largest image the command reads, checked from the file's header before
    any pixel is decoded (a 700-byte PNG can claim 40000 x 20000). ``family`` names the command's own
    limit in :data:`pantheon.io.validate.COMMAND_PIXEL_LIMITS`; None (batch) = the pipeline's."""
    from .io.validate import COMMAND_PIXEL_LIMITS
    limit = COMMAND_PIXEL_LIMITS[family] if family else None
    default = f"{limit:,}" if limit else "the pipeline's own limit"
    p.add_argument("--max-pixels", type=NON_NEGATIVE, default=limit, metavar="N",
                   help=f"refuse an image of more than N pixels (voxels in 3D), checked from its header before "
                        f"reading (default {default}; 0 = no limit)")


OUTPUT_HELP = ("output folder: new, empty, or holding no results (created; results appear when complete, "
               "all together)")


def add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output folder that already holds results, whole (default: refuse it)")


# Parsed values that are never files (a folder named like one in the working directory is no input).
NOT_PATHS = ("output", "output_folder", "command", "action", "interrupt_note", "format", "device", "precision")


def case_folder(args):
    """The output folder of a single-case command (the commands with --overwrite), or None. Every
    option naming a file or folder that exists is an input --overwrite never deletes."""
    if getattr(args, "overwrite", None) is None or not getattr(args, "output", None):
        return None
    from .outputs import OutputFolder
    inputs = [v for k, v in vars(args).items() if k not in NOT_PATHS
              and isinstance(v, (str, os.PathLike)) and v and Path(v).expanduser().exists()]
    return OutputFolder(args.output, args.overwrite, inputs)


@contextmanager
def output_stage(args):
    """A folder to write into; on success its files become the command's output folder (see
    pantheon.outputs.OutputFolder: beside what is there, or replacing it whole with --overwrite)."""
    folder = getattr(args, "output_folder", None)
    if folder is not None:  # opened (checked and locked) by main before any work
        with folder.staged() as stage:
            yield stage
        return
    with case_folder(args) as folder:  # a command function called without main
        with folder.staged() as stage:
            yield stage


def write_outputs(args, result, progress, source=None, preview=True) -> List[str]:
    """Write ``result`` as the command's output folder; returns the files' final paths."""
    from .outputs import write_result
    with output_stage(args) as stage:
        files = write_result(result, stage, args.format, source=source, preview=preview, progress=progress)
    return [str(Path(args.output) / f.name) for f in files]


def read_input(path: str, args):
    from .io import read_volume
    return read_volume(path, max_pixels=args.max_pixels)


def check_weights_file(weights: Optional[str]) -> None:
    """A ``.pt`` weights file that is not a PyTorch file at all (text, random bytes) is refused here in
    our words: PyTorch's own error for it is a KeyError or advice to run the file's code."""
    if weights and Path(weights).is_file() and not str(weights).lower().endswith(".safetensors"):
        from .models.checkpoints import check_torch_file
        check_torch_file(weights)
