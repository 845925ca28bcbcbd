"""Fresh Jupyter kernels forked from a process that imported the notebook's modules once.

A kernel started the ordinary way (``python -m ipykernel_launcher``) imports IPython and ipykernel,
and the training notebook's first cell then imports torch, pandas, matplotlib and ``longtail``:
about 3.5 s of CPU (2 s of it ``import torch``) on every run, for a run that trains in half a
second.  A ``ForkServer`` is a process that makes those imports (``PRELOAD``) once; on request it
forks, and the child becomes one kernel (ipykernel's ``IPKernelApp`` on the connection file that
jupyter_client wrote).  Each kernel is still a fresh process that runs one notebook and is killed
after it: no kernel is ever given a second notebook, and nothing a notebook does reaches the
server or the next kernel (a fork copies the server's memory as it was after the imports).

``ForkedKernelManager`` is jupyter_client's ``AsyncKernelManager`` with a launcher that asks the
server (``ForkProvisioner``); papermill takes it as ``kernel_manager_class``, so start-up time-outs,
interrupts, the kernel's kill after the last cell and nbclient's clean-up stay jupyter_client's.

What a forked kernel shares with an ordinarily started one, and what it does not:

- the environment, working directory, command-line arguments and session (``setsid``, as
  jupyter_client's ``start_new_session``) are the request's, Ctrl-C's disposition the one the
  server was started with (the requester's, as an ordinary kernel inherits it); the server itself is
  started with the requester's environment and working directory, and a request whose environment
  (less ``PER_KERNEL_ENV``) or directory differs is served by a new server, since the preloaded
  modules read some variables as they load (``OMP_NUM_THREADS`` by the OpenMP runtime,
  ``MPLBACKEND`` by matplotlib);
- numpy's legacy global random state is reseeded from the OS in each kernel, as a fresh process
  seeds it; Python's ``random`` reseeds itself after a fork; torch's default generator has its
  fixed start seed in both; the string hash seed is the server's (shared by its kernels);
- the server forks only while it runs no thread but ``FORK_SAFE_THREADS`` (pyarrow's jemalloc
  thread) and numpy's OpenBLAS pool, which handle forks (an OpenMP pool would not: torch starts
  none on import), and only before CUDA is started in it (a forked child could not use the GPU;
  the preloaded modules do not start it); otherwise, or when the kernel's command is not ``python ... -m
  ipykernel_launcher``, or off Linux, the kernel is launched the ordinary way.

Lifetimes: a kernel dies with its server (``PR_SET_PDEATHSIG``), the server when its owner closes
the request pipe or dies (end of file on it), so no kernel outlives the process that asked for it;
the grid kills workers, servers and kernels alike on an interrupt.  ``close_servers`` ends this
process's servers (the grid calls it after its runs).

    python -m longtail.kernels REQUEST_FD REPLY_FD MODULES_JSON   # the server (started by ForkServer)
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from queue import Empty

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner
from traitlets import DottedObjectName, Type

#: modules the server imports once for all its kernels: what ``notebooks/train.py`` imports (and
#: what ipykernel imports to start), the bulk of a run's start-up time.  Any importable module
#: list works; a module a notebook does not use costs the server's memory only.
PRELOAD = ("ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.debugger", "matplotlib_inline.backend_inline",
           "torch", "pandas", "matplotlib.pyplot", "longtail.run", "longtail.figures", "longtail.report",
           # what a run imports as it goes (a mode linear run on cached features: 0.05 s of each kernel)
           "longtail.data", "longtail.engine", "longtail.features", "longtail.imagecache", "longtail.inference",
           "longtail.losses", "longtail.methods", "longtail.models", "longtail.samplers", "longtail.selection",
           "longtail.transforms", "pandas.io.formats.csvs")
#: what the report's notebooks (``longtail.report``) import, once for both: seaborn (with SciPy: 2.5 s,
#: by ``figures.setup``) and the modules they read the runs with; no torch (2 s), which they never use
REPORT_PRELOAD = ("ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.debugger", "matplotlib_inline.backend_inline",
                  "pandas", "matplotlib.pyplot", "seaborn", "longtail.data", "longtail.datasummary",
                  "longtail.figures", "longtail.leaderboard", "longtail.report", "longtail.results", "longtail.thesis")
#: environment variables that differ from kernel to kernel (jupyter_client's launcher sets them):
#: not part of the server's identity
PER_KERNEL_ENV = ("JPY_PARENT_PID", "JPY_SESSION_NAME")
#: threads that may run in the server when it forks (others could hold a lock the child inherits)
FORK_SAFE_THREADS = ("jemalloc_bg_thd",)
#: matplotlib's backend in a kernel: ipykernel sets it as it starts unless MPLBACKEND is set; the
#: server sets it the same way before importing matplotlib, which reads it on import
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
_LAUNCHER = "ipykernel_launcher"
_PR_SET_PDEATHSIG = 1


class ForkServerError(RuntimeError):
    """The server did not start or did not fork (the kernel is then launched the ordinary way)."""


# ----------------------------------------------------------------------------------- the server side

def _threads() -> dict[str, str]:
    """This process's threads other than the calling one: id -> name (Linux /proc)."""
    me = str(threading.get_native_id())
    names = {}
    for task in os.listdir("/proc/self/task"):
        if task != me:
            try:
                with open(f"/proc/self/task/{task}/comm") as fh:
                    names[task] = fh.read().strip()
            except OSError:  # the thread ended meanwhile
                pass
    return names


def _cuda_initialized() -> bool:
    """Whether this process started CUDA: torch's lazy initialisation, or the CUDA driver (libcuda,
    loaded by the first CUDA runtime call, even ``torch.cuda.is_available()``); a forked child of
    such a process cannot use the GPU."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return True
    try:
        with open("/proc/self/maps") as fh:
            return any(os.path.basename(line.split()[-1]).startswith("libcuda.so") for line in fh if "/" in line)
    except OSError:
        return True


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL for this process when its parent dies; exits now when the parent is gone already."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent_pid:
        os._exit(1)


def _become_kernel(request: dict, server_pid: int, sigint, fds: tuple[int, ...]) -> None:
    """In the forked child: the request's session, environment, directory and arguments, then
    ipykernel's kernel until it is shut down or killed.  Never returns."""
    code = 1
    try:
        os.setsid()
        _die_with_parent(server_pid)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if sigint is not None:  # None: a handler not set from Python, left as it is
            signal.signal(signal.SIGINT, sigint)
        for fd in fds:
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = [request["launcher"], *request["args"]]
        if "numpy" in sys.modules:  # a fresh process seeds numpy's legacy global state from the OS
            sys.modules["numpy"].random.seed()
        from ipykernel import kernelapp
        kernelapp.launch_new_instance()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the kernel failed to start: say why on its stderr
        import traceback
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(request_fd: int, reply_fd: int, modules) -> None:
    """The server: import ``modules``, say ready, then fork one kernel per request line until the
    request pipe closes.  Each reply is one JSON line: ``{"pid": ...}`` or ``{"error": ...}``."""
    server_pid = os.getpid()
    sigint = signal.getsignal(signal.SIGINT)  # the kernels get the disposition this process was given
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's; the server follows the owner
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # kernels are reaped as they end
    if not os.environ.get("MPLBACKEND"):
        os.environ["MPLBACKEND"] = INLINE_BACKEND
    requests = os.fdopen(request_fd, "r", encoding="utf-8")
    replies = os.fdopen(reply_fd, "w", encoding="utf-8")

    def reply(obj) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    import importlib
    import importlib.util
    try:
        # numpy's OpenBLAS starts its thread pool as it loads (OMP_NUM_THREADS > 1) and stops it before
        # every fork itself (pthread_atfork): those threads, told apart by when they appeared, are safe
        before = set(_threads())
        importlib.import_module("numpy")
        blas_threads = set(_threads()) - before
        for name in modules:
            importlib.import_module(name)
        launcher = importlib.util.find_spec(_LAUNCHER).origin
    except BaseException as exc:  # noqa: BLE001 - tell the owner, who launches its kernels the ordinary way
        reply({"error": f"importing the preloaded modules failed: {type(exc).__name__}: {exc}"})
        return
    import gc
    gc.collect()
    gc.freeze()  # the imported objects stay out of the kernels' collections: fewer copied pages
    reply({"ready": True, "pid": server_pid})
    for line in requests:
        request = json.loads(line)
        unsafe = [name for tid, name in _threads().items() if tid not in blas_threads and name not in FORK_SAFE_THREADS]
        if unsafe or _cuda_initialized():
            reply({"error": f"the fork server runs threads {unsafe}; it forks no kernel" if unsafe else
                   "the fork server initialised CUDA (a forked child could not use it); it forks no kernel"})
            continue
        pid = os.fork()
        if pid == 0:
            _become_kernel({**request, "launcher": launcher}, server_pid, sigint, (request_fd, reply_fd))
        reply({"pid": pid})
    os._exit(0)  # the owner closed the pipe: no teardown of the preloaded modules to wait for


# ------------------------------------------------------------------------------------ the owner side

def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22); None when it
    is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


class ForkedProcess:
    """A forked kernel as ``subprocess.Popen`` is used by jupyter_client's ``LocalProvisioner``
    (``pid``, ``poll``, ``wait``, ``send_signal``, ``kill``, ``terminate``).  It is the server's
    child, not ours: it is alive while /proc shows it with its start time (no pid reuse), and its
    exit status is not known (``returncode`` is minus the signal we sent, else 1)."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._sent: int | None = None
        self._ticks = _start_ticks(pid)

    def poll(self) -> int | None:
        if self.returncode is None and (self._ticks is None or _start_ticks(self.pid) != self._ticks):
            self.returncode = -self._sent if self._sent else 1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            self._sent = int(signum)
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def _split_command(cmd: list[str]) -> tuple[list[str], list[str]] | None:
    """``[python, *flags, -m, ipykernel_launcher, *args]`` as (``[python, *flags]``, args); None for
    any other kernel command (it is not forked)."""
    for i in range(1, len(cmd) - 1):
        if cmd[i] == "-m" and cmd[i + 1] == _LAUNCHER:
            return cmd[:i], cmd[i + 2:]
    return None


class ForkServer:
    """One server process: ``python [flags] -m longtail.kernels`` in ``cwd`` with ``env``, its
    ``modules`` imported; ``fork(args, env)`` gives one kernel.  Thread-safe."""

    def __init__(self, python: list[str], cwd: str, env: dict, modules=PRELOAD, start_timeout: float = 120):
        self.python, self.cwd, self.env, self.modules = list(python), str(cwd), dict(env), tuple(modules)
        self.start_timeout = start_timeout
        self._lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self._requests = self._replies = None
        self.error: str | None = None  # why it cannot serve (it is not tried again)

    def _start(self) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        env = {**self.env, "JPY_PARENT_PID": str(os.getpid())}  # as the kernels it stands for
        try:
            self.proc = subprocess.Popen([*self.python, "-m", "longtail.kernels", str(req_r), str(rep_w),
                                          json.dumps(self.modules)], cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                                         pass_fds=(req_r, rep_w))
        finally:
            os.close(req_r)
            os.close(rep_w)
        self._requests = os.fdopen(req_w, "w", encoding="utf-8")
        self._replies = os.fdopen(rep_r, "r", encoding="utf-8")
        ready = self._reply(self.start_timeout, "to import " + ", ".join(self.modules))
        if not ready.get("ready"):
            raise ForkServerError(ready.get("error", f"unexpected answer {ready}"))

    def _reply(self, timeout: float, doing: str) -> dict:
        ready, _, _ = select.select([self._replies], [], [], timeout)
        line = self._replies.readline() if ready else None
        if not line:
            code = self.proc.poll()
            raise ForkServerError(f"the kernel fork server did not answer in {timeout:g} s {doing}" if line is None
                                  else f"the kernel fork server ended (exit status {code}) {doing}")
        return json.loads(line)

    def fork(self, args: list[str], env: dict, timeout: float = 30) -> ForkedProcess:
        """A new kernel with command-line ``args`` (after ``-m ipykernel_launcher``) and ``env``."""
        with self._lock:
            if self.error:
                raise ForkServerError(self.error)
            try:
                if self.proc is None:
                    self._start()
                self._requests.write(json.dumps({"args": list(args), "env": dict(env), "cwd": self.cwd}) + "\n")
                self._requests.flush()
                answer = self._reply(timeout, "to fork a kernel")
            except (OSError, ValueError, ForkServerError) as exc:
                self.error = str(exc)
                self._stop()
                raise ForkServerError(self.error) from exc
            if "pid" not in answer:
                raise ForkServerError(answer.get("error", f"unexpected answer {answer}"))
            return ForkedProcess(int(answer["pid"]))

    def _stop(self) -> None:
        for fh in (self._requests, self._replies):
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()
        self._requests = self._replies = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)  # end of file on its requests: it exits (its kernels with it)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        """End the server; kernels it forked die with it."""
        with self._lock:
            self._stop()
            self.proc = None


_servers: dict[tuple, ForkServer] = {}
_servers_lock = threading.Lock()
_warned: set[str] = set()


def _identity(python: list[str], cwd: str, env: dict, modules) -> tuple:
    return (tuple(python), str(cwd), tuple(sorted((k, v) for k, v in env.items() if k not in PER_KERNEL_ENV)),
            tuple(modules))


def server_for(python: list[str], cwd: str, env: dict, modules=PRELOAD) -> ForkServer:
    """This process's server for kernels of ``python`` in ``cwd`` with ``env`` (one at a time: a
    server for another environment replaces it)."""
    key = _identity(python, cwd, env, modules)
    with _servers_lock:
        server = _servers.get(key)
        if server is None:
            for old in _servers.values():
                old.close()
            _servers.clear()
            server = _servers[key] = ForkServer(python, cwd, env, modules)
    return server


def close_servers() -> None:
    """End this process's fork servers (and any kernel they forked that still runs)."""
    with _servers_lock:
        for server in _servers.values():
            server.close()
        _servers.clear()


atexit.register(close_servers)


def _warn_once(text: str) -> None:
    if text not in _warned:
        _warned.add(text)
        print(f"[kernels] {text}; kernels start the ordinary way", file=sys.stderr, flush=True)


class ForkProvisioner(LocalProvisioner):
    """jupyter_client's local provisioner whose kernels come from a ``ForkServer`` (``modules``
    preloaded); a kernel the server cannot fork is launched as ``LocalProvisioner`` does."""

    modules: tuple = PRELOAD
    extra_env: dict = {}

    async def launch_kernel(self, cmd: list[str], **kwargs):
        split = _split_command(cmd) if sys.platform.startswith("linux") else None
        if split is not None:
            python, args = split
            env = {**dict(kwargs.get("env") or os.environ), **self.extra_env}
            env["JPY_PARENT_PID"] = str(os.getpid())  # as jupyter_client's launcher sets it
            cwd = str(kwargs.get("cwd") or os.getcwd())
            try:
                process = server_for(python, cwd, env, self.modules).fork(args, env)
            except ForkServerError as exc:
                _warn_once(str(exc))
            else:
                self.process, self.pid, self.pgid, self.cwd = process, process.pid, process.pid, cwd
                return self.connection_info
        return await super().launch_kernel(cmd, **kwargs)

    async def send_signal(self, signum: int) -> None:
        # the kernel's process group is its pid (setsid): signal it only while that kernel lives
        if isinstance(self.process, ForkedProcess):
            if self.process.poll() is None:
                self.process._sent = int(signum)
                try:
                    os.killpg(self.pgid, signum)
                except OSError:  # not yet its own session (it is forking): the process alone
                    self.process.send_signal(signum)
            return
        await super().send_signal(signum)


class ReadyKernelClient(AsyncKernelClient):
    """jupyter_client's ``AsyncKernelClient`` whose ``wait_for_ready`` ends as soon as the kernel is
    ready: jupyter_client's waits for a kernel_info reply on the shell channel and a message on IOPub
    (a connected IOPub), then flushes IOPub until 0.2 s pass without a message, a fixed 0.2 s a
    kernel; this one stops flushing at the kernel's ``status: idle`` for the last kernel_info
    request, after which the kernel publishes nothing until asked (0.2 s of silence stays the
    fallback)."""

    async def wait_for_ready(self, timeout: float | None = None) -> None:
        deadline = time.time() + (float("inf") if timeout is None else timeout)
        while True:  # as jupyter_client's: until a kernel_info reply and a message on IOPub
            request = self.kernel_info()
            try:
                reply = await self.shell_channel.get_msg(timeout=1)
            except Empty:
                pass
            else:
                if reply["msg_type"] == "kernel_info_reply":
                    try:
                        first = await self.iopub_channel.get_msg(timeout=0.2)
                    except Empty:
                        pass
                    else:
                        self._handle_kernel_info_reply(reply)
                        break
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.time() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")
        msg = first
        while not (msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle"
                   and msg["parent_header"].get("msg_id") == request):
            try:
                msg = await self.iopub_channel.get_msg(timeout=0.2)
            except Empty:
                break


class ForkedKernelManager(AsyncKernelManager):
    """``AsyncKernelManager`` whose kernels are forked (``ForkProvisioner``, from a server that
    imported ``modules``, its environment and theirs with ``extra_env``) and whose client is a
    ``ReadyKernelClient``; papermill's ``kernel_manager_class``."""

    client_class = DottedObjectName("longtail.kernels.ReadyKernelClient")
    client_factory = Type(klass=ReadyKernelClient)
    modules: tuple | None = None  # None: the provisioner's own (PRELOAD)
    extra_env: dict = {}

    async def _async_pre_start_kernel(self, **kw):
        if self.provisioner is None:  # jupyter_client creates the default one only when none is set
            import uuid
            self.kernel_id = self.kernel_id or kw.pop("kernel_id", None) or str(uuid.uuid4())
            self.provisioner = ForkProvisioner(kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self)
            if self.modules is not None:
                self.provisioner.modules = self.modules
            self.provisioner.extra_env = self.extra_env
        return await super()._async_pre_start_kernel(**kw)


class ReportKernelManager(ForkedKernelManager):
    """``ForkedKernelManager`` of the report's notebooks (``REPORT_PRELOAD``), with SciPy's OpenBLAS on
    one thread: imported by seaborn, it would start a thread pool in the server, which then forks no
    kernel (numpy's is told apart; the report's notebooks do no linear algebra worth threads)."""

    modules = REPORT_PRELOAD
    extra_env = {"OPENBLAS_NUM_THREADS": "1"}


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]))
