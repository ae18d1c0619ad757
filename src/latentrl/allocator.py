"""The process's heap allocator: tcmalloc where the system has one, preloaded by re-executing the command.

A training step on a CPU allocates and frees gigabytes of activations; glibc's ``malloc`` hands large blocks
back to the kernel on ``free`` and the next step's allocation faults them in again, page by page. On some
machines that is expensive: on this project's (a Firecracker VM that takes freed pages back) a 4 KB page
costs ~17 µs to fault in, and a SmolLM2 GRPO step spent seconds of system time doing it. tcmalloc (gperftools)
keeps freed memory for reuse, as Intel's PyTorch CPU guides advise; benchmarks/bench_allocator.py measures
the difference. The arithmetic does not change: the same run logs the same losses under either allocator.

An allocator can only be chosen before the process starts, so the ``latentrl`` command
(``latentrl.cli:entry``, also ``python -m latentrl.cli``) re-executes itself once with ``LD_PRELOAD`` naming the
library (:func:`reexec`); ``latentrl.cli.main`` called as a function does not.
``LATENTRL_ALLOCATOR`` chooses:

- ``auto`` (default): tcmalloc if one of :data:`TCMALLOC_NAMES` is in the interpreter's or the system's
  library folders (Debian/Ubuntu: ``apt install libtcmalloc-minimal4``; conda: ``gperftools``), else glibc's;
  an allocator the user preloaded already (any ``*malloc*`` library in ``LD_PRELOAD``) is kept;
- ``system``: never preload;
- a path to a shared library: preload that one (an error if it does not exist).

Linux only; elsewhere, and when ``LD_PRELOAD`` already names the library, nothing happens.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

ENV = "LATENTRL_ALLOCATOR"
DONE = "LATENTRL_ALLOCATOR_REEXEC"  # set in the re-executed process: never a second time (even if ld.so drops LD_PRELOAD)
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so")
# tcmalloc reports every allocation above 1 GiB on stderr unless told a higher threshold (the update of a real
# model makes several)
QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 62)}


def library_dirs() -> list[Path]:
    """Where :func:`find_tcmalloc` looks: the environment's own ``lib`` (a venv's or conda's), then the
    system's, the multiarch folder (``/usr/lib/x86_64-linux-gnu``) first."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = [Path(sys.prefix, "lib"), Path(sys.base_prefix, "lib")]
    for root in ("/usr/local/lib", "/usr/lib", "/lib"):
        dirs += [Path(root, multiarch)] if multiarch else []
        dirs.append(Path(root))
    dirs += [Path("/usr/lib64"), Path("/lib64")]
    return list(dict.fromkeys(dirs))


def _preloadable(path: str) -> bool:
    return not any(c.isspace() or c == ":" for c in path)  # LD_PRELOAD splits at both


def find_tcmalloc(dirs: list[Path] | None = None) -> str | None:
    """The first tcmalloc library in ``dirs`` (default :func:`library_dirs`) that ``LD_PRELOAD`` can name, or None."""
    for directory in library_dirs() if dirs is None else dirs:
        for name in TCMALLOC_NAMES:
            if (directory / name).is_file() and _preloadable(str(directory / name)):
                return str(directory / name)
    return None


def chosen_library(environ: dict[str, str], platform: str = sys.platform) -> str | None:
    """The library ``LATENTRL_ALLOCATOR`` asks to preload in ``environ`` (None: none), or ValueError naming
    the setting when it names a file that does not exist."""
    choice = environ.get(ENV, "auto").strip() or "auto"
    if choice == "system" or not platform.startswith("linux"):
        return None
    if choice == "auto":
        return None if _preloaded_allocators(environ) else find_tcmalloc()
    if not Path(choice).is_file():
        raise ValueError(f"{ENV}={choice!r}: no such library (use 'auto', 'system' or the path of a shared library)")
    path = str(Path(choice).resolve())  # the children of a run may start elsewhere
    if not _preloadable(path):
        raise ValueError(f"{ENV}={choice!r}: LD_PRELOAD cannot name a path holding a space or ':'")
    return path


def _preloaded(environ) -> list[str]:
    return environ.get("LD_PRELOAD", "").replace(":", " ").split()  # ld.so takes spaces or colons


def _preloaded_allocators(environ) -> list[str]:
    return [p for p in _preloaded(environ) if "malloc" in Path(p).name]


def preload_env(environ: dict[str, str], library: str) -> dict[str, str] | None:
    """``environ`` with ``library`` first in ``LD_PRELOAD`` (and tcmalloc's large-allocation report off), or
    None when a library of that name is preloaded already."""
    preloaded = _preloaded(environ)
    if any(Path(p).name == Path(library).name for p in preloaded):
        return None
    return {**QUIET, **environ, "LD_PRELOAD": " ".join([library, *preloaded])}


def current() -> str:
    """The allocator this process runs with: the preloaded library's path, or ``"system"`` (for run records)."""
    libs = _preloaded_allocators(os.environ)
    return libs[0] if libs else "system"


def relaunchable(orig_argv: list[str]) -> bool:
    """Whether the interpreter's command line ``orig_argv`` starts latentrl itself, so that running it again
    repeats exactly this command: the ``latentrl`` console script, ``-m latentrl.cli`` or ``-c CODE``. Not a
    script read from stdin (``-``, consumed), not a program that runs the CLI inside itself (``runpy``, IPython's
    ``%run``): re-executing those would restart something else."""
    args, i = orig_argv[1:], 0
    while i < len(args):
        a = args[i]
        if a.startswith("-m"):
            return (a[2:] or (args[i + 1] if i + 1 < len(args) else "")) == "latentrl.cli"
        if a.startswith("-c"):
            return True
        if a == "-" or not a.startswith("-"):
            return a != "-" and Path(a).name == "latentrl"
        i += 2 if a in ("-X", "-W") else 1  # the options whose value is the next word
    return False  # an interactive interpreter


def reexec() -> None:
    """Re-execute this process with the chosen allocator preloaded; returns only when nothing is to be done.
    The command line is the interpreter's own (``sys.orig_argv``), so a console script, ``python -m`` and
    ``accelerate launch`` all come back as they were started (:func:`relaunchable` says when that holds)."""
    if os.environ.get(DONE) or not sys.executable or not relaunchable(sys.orig_argv):
        return
    library = chosen_library(dict(os.environ))
    env = preload_env(dict(os.environ), library) if library else None
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**env, DONE: "1"})
