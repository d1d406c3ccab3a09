"""The Jupyter workbench: %%sgl magics through IPython's shell, the dashboard and the HTML report."""

from __future__ import annotations

import re
import time

import pytest
from IPython.core.interactiveshell import InteractiveShell

import sglbench as sgl
from sglbench import viz
from sglbench.lang.global_config import global_config
from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.viz.workbench import DASHBOARD
from tests.helpers import assert_pool_full


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    path = make_random_checkpoint(tmp_path_factory.mktemp("wb"), family="llama", seed=6)
    runtime = sgl.Runtime(str(path), device="cpu", max_total_tokens=4096)
    previous = global_config.default_backend
    sgl.set_default_backend(runtime)
    viz.set_static(True)
    yield runtime
    viz.set_static(False)
    global_config.default_backend = previous
    runtime.shutdown()


@pytest.fixture(scope="module")
def shell(rt):
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "sglbench")
    return ip


@pytest.fixture(autouse=True)
def no_leaks(request):
    yield
    if "rt" in request.fixturenames:
        assert_pool_full(request.getfixturevalue("rt"))


JUDGE = '''s += "Essay: " + essay + "\\n"
forks = s.fork(2)
for f, dim in zip(forks, ["clarity", "evidence"]):
    f += "Judge the " + dim + ": " + sgl.gen("j", max_tokens=6)
forks.join()
s += "Grade: " + sgl.gen("grade", max_tokens=3)
'''


def test_sgl_cell_defines_runs_and_stores(shell, rt):
    shell.run_cell_magic("sgl", "judge(essay) --run essay='cats purr' --out result --temperature 0", JUDGE)
    ns = shell.user_ns
    assert isinstance(ns["judge"], sgl.lang.function.SglFunction)
    state = ns["result"]
    assert state.error() is None
    assert len(state["j"]) == 2 and isinstance(state["grade"], str)
    again = ns["judge"].run(essay="cats purr", temperature=0)
    assert again["grade"] == state["grade"]


def test_sgl_batch_and_trace(shell, rt, capsys):
    shell.user_ns["essays"] = [{"essay": "a"}, {"essay": "b"}, {"essay": "c"}]
    shell.run_cell_magic("sgl", "judge2(essay) --batch essays --out graded --temperature 0 --trace", JUDGE)
    graded = shell.user_ns["graded"]
    assert len(graded) == 3 and all(s.error() is None for s in graded)


def test_error_in_body_points_at_cell_line(shell, rt, capsys):
    body = 's += "x"\nvalue = 1 / 0\ns += sgl.gen("y", max_tokens=2)\n'
    shell.run_cell_magic("sgl", "broken() --run", body)
    err = capsys.readouterr().err
    assert "cell line 3" in err and "ZeroDivisionError" in err
    assert "site-packages" not in err


@pytest.mark.parametrize("line", ["no_parens --run", "f(x --run", "f(x) --frobnicate", "f(x) --run a=1 --batch b"])
def test_bad_magic_lines_give_usage(shell, line, capsys):
    shell.run_cell_magic("sgl", line, 's += "x"\n')
    assert "usage: %%sgl" in capsys.readouterr().err


def test_background_run_fills_variable(shell, rt):
    shell.run_cell_magic("sgl", "bg(x) --run x='hi' --background --out bg_state --temperature 0",
                         's += x + sgl.gen("y", max_tokens=4)\n')
    deadline = time.monotonic() + 60
    while "bg_state" not in shell.user_ns:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    shell.user_ns["bg_state"].sync()
    assert isinstance(shell.user_ns["bg_state"]["y"], str)


def test_dashboard_and_report(rt, tmp_path, shell):
    shell.run_cell_magic("sgl", "judge3(essay) --run essay='dogs bark' --temperature 0", JUDGE)
    dash = rt.dashboard()
    assert rt.dashboard() is dash
    bundle = dash._repr_mimebundle_()
    assert "text/html" in bundle and "<svg" in bundle["text/html"]
    assert repr(dash) == repr(rt.dashboard())
    path = rt.report(str(tmp_path / "report.html"))
    html = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html) and html.count("<script") == 1
    assert "judge3" in html  # the program graph of the run
    graphs = [g for g in dash.widget.graphs if g["name"] == "judge3"]
    assert graphs and sorted(n["branch"] for n in graphs[-1]["nodes"] if n["kind"] == "state"
                             and n["branch"] is not None) == [0, 1]
    shell.run_line_magic("sgl_report", str(tmp_path / "again.html"))
    assert (tmp_path / "again.html").exists()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_live_cell_leaves_the_shared_dashboard_running(shell, rt):
    """`%%sgl --live` displays the runtime's one dashboard and never stops it: it keeps updating after the cell."""
    previous = rt.attachments.pop(DASHBOARD, None)  # a static one made by an earlier test
    viz.set_static(False)
    try:
        shell.run_cell_magic("sgl", "live1(x) --run x='hi' --live --temperature 0",
                             's += x + sgl.gen("y", max_tokens=3)\n')
        dash = rt.dashboard()
        assert dash.live and dash.status == ("live", "")
        finished = rt.metrics().num_finished
        assert wait_for(lambda: dash.widget.summary["finished"] == finished)
        rt.generate(["after the cell", "and another"], max_new_tokens=2, temperature=0)
        assert wait_for(lambda: dash.widget.summary["finished"] == finished + 2)  # still updating
        assert wait_for(lambda: dash.widget.calls[-1]["completion_tokens"] == 2)
        assert any(c["program"] == "live1" and c["call"] == "gen y" for c in dash.widget.calls)
        shell.run_cell_magic("sgl", "live2(x) --run x='again' --live --temperature 0",
                             's += x + sgl.gen("y", max_tokens=2)\n')
        assert rt.dashboard() is dash and dash.live
        dash.stop()
        status, note = dash.status
        assert status == "stopped" and note.endswith("stop() was called") and not dash.live
        shell.run_cell_magic("sgl", "live3(x) --run x='more' --live --temperature 0",
                             's += x + sgl.gen("y", max_tokens=2)\n')
        assert dash.live and dash.status == ("live", "")  # a --live cell restarts a stopped dashboard
        dash.stop()
    finally:
        viz.set_static(True)
        rt.attachments.pop(DASHBOARD, None)
        if previous is not None:
            rt.attachments[DASHBOARD] = previous


def test_the_dashboard_says_when_its_runtime_shut_down(tmp_path):
    path = make_random_checkpoint(tmp_path / "m", family="llama", seed=7)
    runtime = sgl.Runtime(str(path), device="cpu", max_total_tokens=512)
    viz.set_static(False)
    try:
        dash = runtime.dashboard()
        runtime.generate(["one"], max_new_tokens=2, temperature=0)
        assert wait_for(lambda: dash.widget.summary["finished"] == 1)
    finally:
        viz.set_static(True)
        runtime.shutdown()
    status, note = dash.status
    assert status == "stopped" and note.endswith(": the runtime shut down") and not dash.live
    assert dash._repr_mimebundle_()["text/html"]  # the last state stays displayable
