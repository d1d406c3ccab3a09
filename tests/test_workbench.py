"""The Jupyter workbench: %%sgl magics through IPython's shell, the dashboard and the HTML report."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell

import sglbench as sgl
from sglbench import viz
from sglbench.lang.global_config import global_config
from sglbench.runtime.models.synthetic import make_random_checkpoint
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
    import time

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
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "judge3" in html  # the program graph of the run
    shell.run_line_magic("sgl_report", str(tmp_path / "again.html"))
    assert (tmp_path / "again.html").exists()
