"""How the tests run the command line as a user types it: in this process (`seabench_in_process`, behind
conftest's `seabench` fixture), or, where a process of its own is the point (kill -9, signals, jobs at
once), in a real process forked from a preloaded server (`Child`)."""

import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path


def seabench_in_process(*args: str, cwd: Path, env: dict[str, str],
                        check: bool = True) -> subprocess.CompletedProcess:
    """`seabench ARGS` as a user types it, run by `bench.cli.main` in this process (Hydra included) in `cwd`
    with `env` added to the environment: the same path as the console script without a new interpreter
    (about 5 s of imports each). Returns what `subprocess.run` would; with `check`, a non-zero exit fails
    the test with the output. Real processes stay where they are the point: signals, kill -9, concurrency."""
    from bench import cli

    out, err = StringIO(), StringIO()
    handler, argv, environ, here = signal.getsignal(signal.SIGTERM), sys.argv[:], dict(os.environ), os.getcwd()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()  # logging as a new process starts it: no handler (a run's Hydra adds its own)
    root.setLevel(logging.WARNING)
    os.environ.update(env)
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(list(args))
    except SystemExit as exit_:  # a single run's error leaves through Hydra with sys.exit
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:  # what the command set for itself (a handler, a sweep's job count, logging) ends with it
        signal.signal(signal.SIGTERM, handler)
        sys.argv[:] = argv
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(here)
        root.handlers[:] = handlers
        root.setLevel(level)
    result = subprocess.CompletedProcess(["seabench", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"exit {code}\n{result.stdout}\n{result.stderr}")
    return result


def own_env(tmp: Path) -> dict[str, str]:
    """A run's own checkpoint/feature cache and data root, under `tmp`."""
    return {"SEABENCH_CACHE": str(tmp / "cache"), "SEABENCH_DATA": str(tmp / "data")}


# ---- real processes, started fast ---------------------------------------------------------------------------
# A test that kills a job, signals it or runs eight at once needs real processes, but not a new interpreter
# each: `python -m bench` spends about 5 s importing torch, timm and Hydra before its first line of work. The
# processes below are forked from one server per test process that imported all that once (multiprocessing's
# forkserver: a single-threaded process, as a DataLoader's workers are forked from), so each starts in
# milliseconds and is then a job like any other: its own pid, session, signal handlers, locks and exit code.
PRELOAD = ["torch", "timm", "hydra", "submitit", "bench.cli", "bench.job", "bench.features", "bench.protocol",
           "bench.methods.linear", "bench.methods.sgd", "bench.sweep.cells", "bench.sweep.allocation",
           "bench.finetune.loop"]
CLI = "import sys\nfrom bench.cli import main\nsys.exit(main(sys.argv[1:]))\n"  # what `python -m bench` runs
FORKSERVER = multiprocessing.get_context("forkserver")  # its server starts with the first Child
FORKSERVER.set_forkserver_preload(PRELOAD)


def _child(code: str, argv: list[str], cwd: str, env: dict[str, str], out: str, err: str, session: bool) -> None:
    """In the forked process: become `python -c CODE ARGV...` started in `cwd` with `env`, its output in files."""
    if session:
        os.setsid()  # its own process group, as a scheduler's job
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        with open(path, "wb") as f:
            os.dup2(f.fileno(), fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as at a terminal
    multiprocessing.set_start_method(None, force=True)  # the platform's default again, not the server's
    sys.argv = ["-c", *argv]
    exec(compile(code, "<child>", "exec"), {"__name__": "__main__"})  # noqa: S102 -- what `python -c` does


class Child:
    """A process running `python -c CODE *ARGV` (see above), with the part of subprocess.Popen's interface the
    tests use: pid, poll, wait, kill, send_signal, communicate -> (stdout, stderr), returncode."""

    def __init__(self, code: str, argv: list[str], *, cwd: Path, env: dict[str, str] | None = None,
                 new_session: bool = False):
        import tempfile

        self._dir = Path(tempfile.mkdtemp(prefix="seabench-child-"))
        self._out, self._err = self._dir / "stdout", self._dir / "stderr"
        self._process = FORKSERVER.Process(target=_child, daemon=False, args=(
            code, [str(a) for a in argv], str(cwd), {**os.environ, **(env or {})}, str(self._out), str(self._err),
            new_session))
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode  # negative: ended by that signal, as Popen's

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"child {self.pid}", timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        out, err = (p.read_text(errors="replace") for p in (self._out, self._err))
        shutil.rmtree(self._dir, ignore_errors=True)
        return out, err
