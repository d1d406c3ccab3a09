"""IPython magics: `%load_ext sglbench`, then

    %%sgl NAME(params) [--run [KWARGS]] [--batch VAR] [--trace] [--live] [--out VAR] [--background]
    %sgl_runtime [MODEL_PATH] [--device D] [--max-total-tokens N] [--no-cache]
    %sgl_report PATH

The `%%sgl` body is a program body with `s` (the state) and `sgl` in scope; the cell defines an
`SglFunction` called NAME in the user namespace. Body line k is cell line k + 1, so tracebacks
name the cell's own lines.
"""

from __future__ import annotations

import argparse
import ast
import linecache
import shlex
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.display import display

USAGE = ("usage: %%sgl NAME(params) [--run [KWARGS]] [--batch VAR] [--trace] [--live] [--out VAR] "
         "[--background] [--temperature T] [--max-new-tokens N]")


class MagicUsageError(ValueError):
    """The magic line is malformed; the message carries the usage line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would sys.exit: raise instead
        raise MagicUsageError(f"{message}\n{USAGE}")


def _flag_parser() -> _Parser:
    p = _Parser(prog="%%sgl", add_help=False)
    p.add_argument("--run", nargs="*", default=None, metavar="KWARGS")
    p.add_argument("--batch", default=None, metavar="VAR")
    p.add_argument("--trace", action="store_true")
    p.add_argument("--live", action="store_true")
    p.add_argument("--out", default=None, metavar="VAR")
    p.add_argument("--background", action="store_true")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    return p


@dataclass(frozen=True)
class CellSpec:
    name: str
    params: str
    flags: argparse.Namespace


def parse_cell_line(line: str) -> CellSpec:
    """Split `NAME(params) flags...` into its parts; a usage error for anything malformed."""
    line = line.strip()
    open_at = line.find("(")
    if open_at <= 0 or not line[:open_at].isidentifier():
        raise MagicUsageError(f"expected NAME(params) first, got {line!r}\n{USAGE}")
    depth, close_at = 0, -1
    for i, ch in enumerate(line[open_at:], start=open_at):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            close_at = i
            break
    if close_at < 0:
        raise MagicUsageError(f"unbalanced parentheses in {line!r}\n{USAGE}")
    flags = _flag_parser().parse_args(shlex.split(line[close_at + 1 :], posix=False))  # keep KWARGS' quotes
    if flags.run is not None:
        flags.run = " ".join(flags.run)
    if flags.run is not None and flags.batch is not None:
        raise MagicUsageError(f"--run and --batch exclude each other\n{USAGE}")
    return CellSpec(line[:open_at], line[open_at + 1 : close_at].strip(), flags)


def define_program(spec: CellSpec, body: str, namespace: dict[str, Any]):
    """Compile the cell body into `def NAME(s, params)` in the user namespace; return the SglFunction."""
    import sglbench as sgl

    params = f"s, {spec.params}" if spec.params else "s"
    indented = "".join(f"    {line}\n" for line in (body.splitlines() or ["pass"]))
    source = f"def {spec.name}({params}):\n{indented or '    pass'}"
    filename = f"<%%sgl {spec.name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    code = compile(ast.parse(source, filename), filename, "exec")
    namespace.setdefault("sgl", sgl)
    exec(code, namespace)
    program = sgl.function(namespace[spec.name])
    program.source_filename = filename
    namespace[spec.name] = program
    return program


def clean_traceback(exc: BaseException, filename: str) -> str:
    """The error with only the frames of the cell itself (cell line numbers), not the engine's."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    lines = [f"  cell line {f.lineno}, in {f.name}\n    {f.line}\n" for f in frames]
    return "".join(["Traceback (cell):\n", *lines, f"{type(exc).__name__}: {exc}\n"])


@magics_class
class SglMagics(Magics):
    @cell_magic
    def sgl(self, line: str, cell: str):
        """%%sgl NAME(params) [flags]: define a program from the cell, optionally run, batch, trace it."""
        ns = self.shell.user_ns
        try:
            spec = parse_cell_line(line)
        except MagicUsageError as exc:
            print(f"%%sgl: {exc}", file=sys.stderr)
            return None
        try:
            program = define_program(spec, cell, ns)
        except SyntaxError as exc:
            print(f"%%sgl {spec.name}: syntax error at cell line {(exc.lineno or 1)}: {exc.msg}", file=sys.stderr)
            return None
        f = spec.flags
        options = {k: v for k, v in (("temperature", f.temperature), ("max_new_tokens", f.max_new_tokens))
                   if v is not None}
        try:
            kwargs = self._kwargs(f.run, ns) if f.run is not None else {}
        except Exception as exc:
            print(f"%%sgl: --run {f.run}: not keyword arguments ({exc})\n{USAGE}", file=sys.stderr)
            return None
        if f.trace:
            display(_graph_view(program.trace(**kwargs)))
        if f.run is None and f.batch is None:
            return None
        if f.batch is not None and f.batch not in ns:
            print(f"%%sgl: --batch {f.batch}: no such variable in the namespace", file=sys.stderr)
            return None

        def execute():
            if f.batch is not None:
                return program.run_batch(ns[f.batch], progress_bar=not _static(), **options)
            return program.run(**kwargs, **options)

        if f.live:
            _live_dashboard()
        if f.background:
            return self._in_background(execute, program, f.out)
        try:
            result = execute()
            _raise_state_error(result)
        except Exception as exc:
            print(clean_traceback(exc, program.source_filename), file=sys.stderr)
            return None
        if f.out:
            ns[f.out] = result
            return None
        return result

    def _kwargs(self, text: str, ns: dict[str, Any]) -> dict[str, Any]:
        if not text.strip():
            return {}
        return eval(f"dict({text})", ns)  # the user's own expression, in the user's own namespace

    def _in_background(self, execute, program, out: str | None):
        """Run without blocking the cell; print where the result will be and stream errors to the cell."""
        ns = self.shell.user_ns
        parent = self.shell.kernel.get_parent() if getattr(self.shell, "kernel", None) else None
        target = out or f"{program.name}_result"

        def work():
            if parent is not None and hasattr(self.shell, "set_thread_parent"):
                self.shell.set_thread_parent(parent)  # background output lands in this cell
            try:
                ns[target] = execute()
            except Exception as exc:
                print(clean_traceback(exc, program.source_filename), file=sys.stderr)

        thread = threading.Thread(target=work, name=f"sgl-{program.name}", daemon=True)
        thread.start()
        print(f"{program.name} runs in the background; its result goes to `{target}`")
        return None

    @line_magic
    def sgl_runtime(self, line: str):
        """%sgl_runtime [MODEL_PATH] [--device D] [--max-total-tokens N] [--no-cache]: start or show the
        runtime, make it the default backend and bind it to `rt`."""
        import sglbench as sgl
        from sglbench.lang.global_config import global_config

        p = _Parser(prog="%sgl_runtime", add_help=False)
        p.add_argument("model_path", nargs="?", default=None)
        p.add_argument("--device", default="auto")
        p.add_argument("--max-total-tokens", type=int, default=None)
        p.add_argument("--no-cache", action="store_true")
        try:
            args = p.parse_args(shlex.split(line))
        except MagicUsageError as exc:
            print(exc, file=sys.stderr)
            return None
        ns = self.shell.user_ns
        current = getattr(global_config.default_backend, "runtime", None)
        if current is not None and current.is_running and not line.strip():
            ns["rt"] = current
            return current
        if current is not None:
            current.shutdown()
        rt = sgl.Runtime(args.model_path, device=args.device, max_total_tokens=args.max_total_tokens,
                         disable_radix_cache=args.no_cache)
        sgl.set_default_backend(rt)
        ns["rt"] = rt
        return rt

    @line_magic
    def sgl_report(self, line: str):
        """%sgl_report PATH: write the self-contained HTML report of the default runtime."""
        from sglbench.lang.global_config import global_config

        path = line.strip() or "sglbench-report.html"
        rt = getattr(global_config.default_backend, "runtime", None)
        if rt is None:
            print("%sgl_report: no runtime yet; start one with %sgl_runtime", file=sys.stderr)
            return None
        written = rt.report(path)
        print(f"report written to {written}")
        return None


def _static() -> bool:
    from sglbench import viz

    return viz.is_static()


def _live_dashboard():
    """Display the default runtime's shared dashboard (restarted if someone stopped it); the cell never stops
    it: it keeps updating until the runtime shuts down."""
    from sglbench.lang.global_config import global_config

    rt = getattr(global_config.default_backend, "runtime", None)
    if rt is None:
        return None
    dashboard = rt.dashboard()
    if not dashboard.static and not dashboard.live and getattr(rt, "is_running", True):
        dashboard.start()
    display(dashboard)
    return dashboard


def _graph_view(trace):
    from sglbench.viz.widgets import ProgramGraphView

    return ProgramGraphView(trace)  # the trace itself: its graph keeps the trace's fork branch numbers


def _raise_state_error(result) -> None:
    """Wait for a single run's state to finish (a blocking cell returns with its workers joined);
    the program's own error, kept in its state, surfaces as the cell's error."""
    if isinstance(result, list):
        return
    result.sync()
    if result.error() is not None:
        raise result.error()


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(SglMagics)
