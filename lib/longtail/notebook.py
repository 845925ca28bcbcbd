"""Executing a notebook with papermill: one function for the grid's runs and the report's notebooks.

``execute`` runs a jupytext ``.py`` notebook (or an in-memory one) on the project's Jupyter kernel
(``KERNEL``, registered by the set-up) into an ``.ipynb``, with the project root as working
directory, papermill's parameter-inspection chatter and the kernel's start-up / shut-down log
silenced, and the kernel killed as soon as the last cell finished (every output is in by then).
It never raises for a failed notebook: the returned ``Execution`` holds the error, and
``Execution.reason`` says it in one line.  ``injection_problems`` refuses parameters whose
injected source would not be a plain literal, before a kernel starts.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import config
from .fileio import one_line
from .kernels import ForkedKernelManager, ReportKernelManager
from .params import json_type_errors

#: the Jupyter kernel that the set-up registers (``ipykernel install --sys-prefix --name longtail``)
KERNEL = "longtail"
#: extra kernel command-line arguments: no start-up / shut-down chatter on the terminal ("running over
#: TCP without encryption"; "KeyboardInterrupt caught in kernel", logged at ERROR because jupyter_client
#: interrupts the kernel before shutting it down)
KERNEL_ARGS = ("--IPKernelApp.log_level=CRITICAL",)


@dataclass
class Execution:
    """What ``execute`` did: the executed notebook's path, its wall time, and the error (None: every
    cell ran)."""

    output: Path
    wall_s: float
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def cell_failed(self) -> bool:
        """A cell raised (the notebook ran up to it); otherwise the kernel or papermill itself failed."""
        from papermill.exceptions import PapermillExecutionError
        return isinstance(self.error, PapermillExecutionError)

    @property
    def reason(self) -> str | None:
        """The error in one line: a cell's exception as ``Name: message``, a missing kernel with how
        to register it, anything else as ``Type: message``; None when the notebook ran."""
        exc = self.error
        if exc is None:
            return None
        if self.cell_failed:
            return one_line(f"{exc.ename}: {exc.evalue}")
        from jupyter_client.kernelspec import NoSuchKernel
        if isinstance(exc, NoSuchKernel):
            return one_line(f"no Jupyter kernel named {exc.name!r} ({exc}); register it with `make setup` "
                            f"(ipykernel install --sys-prefix --name {KERNEL})")
        return one_line(f"{type(exc).__name__}: {exc}")


_quiet_lock = threading.Lock()
_quiet_calls = [0, logging.NOTSET]  # executions under way, papermill's log level before the first


@contextlib.contextmanager
def _quiet_papermill():
    """papermill logs errors only while any execution is under way (the report runs two in threads)."""
    log = logging.getLogger("papermill")
    with _quiet_lock:
        if _quiet_calls[0] == 0:
            _quiet_calls[1] = log.level
            log.setLevel(logging.ERROR)
        _quiet_calls[0] += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_calls[0] -= 1
            if _quiet_calls[0] == 0:
                log.setLevel(_quiet_calls[1])


def execute(notebook, output: str | os.PathLike, parameters: dict | None = None, *, kernel_name: str = KERNEL,
            cwd: str | os.PathLike | None = None, start_timeout: float = 60,
            execution_timeout: float | None = None, forked: bool | str = False) -> Execution:
    """Execute ``notebook`` (a path, relative to the project root unless absolute, or a notebook
    node from ``jupytext.read``) with ``parameters`` into ``output``.

    ``cwd``: the kernel's working directory (default: the project root).  ``start_timeout``: seconds
    for the kernel to start; ``execution_timeout``: seconds a cell may run (None: no limit); both as
    papermill's.  ``forked``: the kernel is forked from this process's server of preloaded modules
    (``longtail.kernels``: still a fresh process for this notebook alone, started in ~0.3 s instead of
    importing torch and the rest anew); ``"report"``: from a server that also imported what the report's
notebooks use (``kernels.REPORT_PRELOAD``); False: started on its own.  Errors of the notebook, the kernel or papermill are returned in the ``Execution``
    (``error``, ``reason``), never raised; KeyboardInterrupt and other BaseExceptions propagate.
    """
    import papermill

    if isinstance(notebook, (str, os.PathLike)):
        import jupytext
        notebook = jupytext.read(config.from_project_root(notebook))
    t0 = time.time()
    error = None
    more = {}
    if forked:
        more["kernel_manager_class"] = ReportKernelManager if forked == "report" else ForkedKernelManager
    # the parameters are checked against longtail.params.SCHEMA (or are the report's own); papermill's
    # parameter inspection only adds noise ("Passed unknown parameter" when it cannot parse a comment)
    with _quiet_papermill():
        try:
            papermill.execute_notebook(notebook, str(output), parameters=dict(parameters or {}),
                                       kernel_name=kernel_name, cwd=str(cwd or config.PROJECT_ROOT),
                                       progress_bar=False, log_output=False, extra_arguments=list(KERNEL_ARGS),
                                       start_timeout=start_timeout, execution_timeout=execution_timeout,
                                       # every output is in and every file written by then: killing the
                                       # kernel saves ~1 s of torch's teardown
                                       shutdown_kernel="immediate", **more)
        except Exception as exc:  # noqa: BLE001 - a failed cell, a kernel that did not start, papermill itself
            error = exc
    return Execution(output=Path(output), wall_s=round(time.time() - t0, 2), error=error)


def injection_problems(params: dict) -> list[str]:
    """The parameters whose papermill-injected source is not a plain literal equal to the value.

    papermill writes each parameter into the notebook as Python source; for a type it does not
    know (bytes, set, ...) it pastes ``str(value)`` between quotes, which a crafted value can close
    to run code.  Each value's source must parse with ``ast.literal_eval`` (literals only, never a
    call) back to the same JSON; anything else is refused before a kernel starts.
    """
    import ast

    from papermill.translators import PythonTranslator


    bad = [f"{e}" for k, v in params.items() for e in json_type_errors(v, str(k))]
    for key, value in params.items():
        if not isinstance(key, str) or not key.isidentifier():
            bad.append(f"parameter name {key!r:.80} is not a Python identifier")
            continue
        source = PythonTranslator.translate(value)
        try:
            same = json.dumps(ast.literal_eval(source), sort_keys=True) == json.dumps(value, sort_keys=True)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            same = False
        if not same:
            bad.append(f"{key}: its notebook source {source!r:.120} is not a literal of the value")
    return list(dict.fromkeys(bad))
