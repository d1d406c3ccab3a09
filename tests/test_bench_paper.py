"""The SGLang paper workloads (sglbench.bench.paper): every workload runs at size tiny, the optimal hit
rate on hand-made requests, the baselines, and the table, files and HTML the suite writes."""

from __future__ import annotations

import dataclasses
import json
import re
import xml.etree.ElementTree as ET

import pytest

import sglbench as sgl
from sglbench.bench.__main__ import main as bench_main
from sglbench.bench.paper import mmlu, tree_of_thought
from sglbench.bench.paper.measure import COLUMNS, measure, measure_round_robin
from sglbench.bench.paper.optimal import RequestRecord, hit_rate, optimal_hit_rate
from sglbench.bench.paper.report import load, results_html, save
from sglbench.bench.paper.runner import SuiteConfig, run_suite
from sglbench.bench.paper.suite import WORKLOADS
from sglbench.bench.paper.systems import RuntimeSystem, TransformersSystem
from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.runtime import Runtime
from tests.helpers import serving

TOLERANCE = 0.02


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(make_random_checkpoint(tmp_path_factory.mktemp("paper"), family="llama", seed=3,
                                      max_position_embeddings=4096))


@pytest.fixture(scope="module")
def rt(model_path):
    runtime = Runtime(model_path, device="cpu")
    yield runtime
    runtime.shutdown()


# ---------------------------------------------------------------------------- hit rates on hand-made requests
def test_optimal_hit_rate_of_prompts_is_the_shared_prefixes():
    a = RequestRecord((1, 2, 3, 4, 5), query_len=4)  # queries [1 2 3 4]
    b = RequestRecord((1, 2, 7, 8, 9), query_len=4)  # shares [1 2]
    c = RequestRecord((1, 2, 3, 4, 6), query_len=4)  # shares all four
    assert optimal_hit_rate([a, b, c]) == pytest.approx(6 / 12)
    assert optimal_hit_rate([c, b, a]) == pytest.approx(6 / 12)  # the same in any order
    assert optimal_hit_rate([a]) == 0.0
    assert optimal_hit_rate([]) == 0.0


def test_optimal_hit_rate_counts_generated_tokens():
    turn1 = RequestRecord((1, 2, 3, 10, 11), query_len=2)  # prompt [1 2 3], generated [10 11 (12)]
    turn2 = RequestRecord((1, 2, 3, 10, 11, 12, 4, 5), query_len=7)  # the whole first turn, then more
    # turn2's prefixes up to [.. 11] were computed by turn1; [.. 12] and [.. 4] are new
    assert optimal_hit_rate([turn1, turn2]) == pytest.approx(5 / 9)


def test_measured_hit_rate_counts_first_lookups_only():
    records = [RequestRecord((1, 2, 3), 2, cached=0), RequestRecord((1, 2, 4), 2, cached=5)]
    assert hit_rate(records) == pytest.approx(2 / 4)  # served tokens are capped at the query
    with pytest.raises(ValueError):
        RequestRecord((1, 2), query_len=3)


# ---------------------------------------------------------------------------- every workload, tiny
@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w.name)
def test_workload_runs_at_tiny_size(rt, workload):
    run = workload.run_for("tiny")
    row = measure(run, RuntimeSystem("sglbench (lpm)", rt)).row()
    assert tuple(row) == COLUMNS
    assert row["workload"] == workload.name and row["programs"] == len(run.arguments)
    assert row["programs_s"] > 0 and row["prefill_tokens"] > 0
    assert 0.0 <= row["hit_rate"] <= row["optimal_hit_rate"] + TOLERANCE
    rt.check_integrity()


def test_fixed_lengths_drop_stop_strings_and_eos():
    run = WORKLOADS[-1].run_for("tiny", fixed_lengths=True)  # react stops thoughts at newlines
    assert run.options["ignore_eos"] is True
    gens = [node for node in run.program.trace(**run.arguments[0]).nodes if node.kind == "gen"]
    assert gens and all(node.payload.params.stop is None for node in gens)
    stopped = WORKLOADS[-1].run_for("tiny")
    assert all(node.payload.params.stop == ("\n",) for node in stopped.program.trace(**stopped.arguments[0]).nodes
               if node.kind == "gen")


def test_repeats_keep_the_fastest_run_from_a_cold_cache(rt):
    run = mmlu.WORKLOADS[0].run_for("tiny")
    once = measure(run, RuntimeSystem("sglbench (lpm)", rt)).row()
    best = measure(run, RuntimeSystem("sglbench (lpm)", rt), repeats=3).row()
    # Every repeat starts from a flushed cache, so the cache behaviour is that of a single run.
    assert best["hit_rate"] == once["hit_rate"] and best["prefill_tokens"] == once["prefill_tokens"]
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        SuiteConfig(model_path=rt.config.model_path, model_label="random", repeats=0)


def test_systems_open_together_are_timed_round_robin(rt):
    """Each round times every system once, so a slow spell of the machine hits all systems alike."""
    opened = []

    class Logged(RuntimeSystem):
        def open_backend(self):
            opened.append(self.name)
            return super().open_backend()

    run = mmlu.WORKLOADS[0].run_for("tiny")
    a, b = Logged("a", rt), Logged("b", rt, hints=False)
    rows = [m.row() for m in measure_round_robin(run, [a, b], repeats=2)]
    assert opened == ["a", "b"] + ["a", "b"] * 2  # warm-ups, then two rounds
    assert [r["system"] for r in rows] == ["a", "b"]
    assert rows[0]["prefill_tokens"] == measure(run, RuntimeSystem("c", rt)).row()["prefill_tokens"]


def test_sizes_are_checked():
    with pytest.raises(ValueError, match="size"):
        WORKLOADS[0].run_for("huge")
    with pytest.raises(ValueError, match="systems"):
        SuiteConfig(model_path="x", model_label="x", systems=("vllm",))


# ---------------------------------------------------------------------------- baselines
def test_no_hints_skips_the_fork_prefill(rt):
    run = tree_of_thought.WORKLOADS[0].run_for("tiny")
    with_hints = measure(run, RuntimeSystem("hints", rt))
    without = measure(run, RuntimeSystem("no hints", rt, hints=False))
    # each fork point commits its prefix first (a request per fork of every program), and run_batch
    # pre-caches the program's constant prefix (one request)
    forks_per_program = 1 + tree_of_thought.SHAPES["tiny"].branches
    extra = len(with_hints.records) - len(without.records)
    assert extra == forks_per_program * len(run.arguments) + 1


@sgl.function
def pick(s, choices_method):
    s += "The river crosses the quiet valley and the"
    s += sgl.select("pick", choices=[" bridge", " harbor tower", " ancient kingdom"], choices_method=choices_method)


def test_transformers_baseline_agrees_with_the_engine(rt, model_path):
    hf = TransformersSystem(model_path, "cpu", rt.engine.dtype, batch_size=4)
    try:
        for workload in mmlu.WORKLOADS:  # one gen token, then select
            run = workload.run_for("tiny")
            ours = run.program.run_batch([dict(a) for a in run.arguments], backend=rt, **run.options)
            theirs = run.program.run_batch([dict(a) for a in run.arguments], backend=hf.open_backend(), **run.options)
            assert [s["answer"] for s in theirs] == [s["answer"] for s in ours]
        method = sgl.unconditional_likelihood_normalized
        ours = pick.run(choices_method=method, backend=rt)["pick"]
        assert pick.run(choices_method=method, backend=hf.open_backend())["pick"] == ours
        row = measure(tree_of_thought.WORKLOADS[0].run_for("tiny"), hf).row()
    finally:
        hf.close()
    assert row["hit_rate"] == 0.0 and row["decode_tokens"] > 0 and row["optimal_hit_rate"] > 0.5


# ---------------------------------------------------------------------------- the suite's table and files
def test_suite_table_files_and_html(model_path, tmp_path):
    config = SuiteConfig(model_path=model_path, model_label="random", size="tiny", device="cpu",
                         systems=("lpm", "no-cache"))
    result = run_suite(mmlu.WORKLOADS[:2], config, log=lambda _: None)  # mmlu-gen, mmlu-select
    frame = result.frame
    assert tuple(frame.columns) == COLUMNS
    assert list(frame["workload"]) == ["mmlu-gen", "mmlu-gen", "mmlu-select", "mmlu-select"]
    off = frame[frame["system"] == "sglbench (radix cache off)"]
    assert (off["hit_rate"] == 0).all() and (off["engine_hit_rate"] == 0).all()
    paths = save(result, tmp_path, "paper")
    saved = json.loads(paths["json"].read_text())
    assert saved["meta"]["size"] == "tiny" and len(saved["rows"]) == 4
    assert paths["csv"].read_text().splitlines()[0] == ",".join(COLUMNS)
    ET.fromstring(paths["svg"].read_text())
    html = results_html(result)
    assert "sglbench (radix cache off)" in html and html.startswith('<div class="sgl-bench">')
    assert load(paths["json"])._repr_html_() == html


def test_isolated_systems_measure_what_in_process_ones_do(model_path):
    """With isolate, each model's systems run in a spawned process: the same rows (counts, hit rates,
    conformance) as in this process, the children gone afterwards, and a child that cannot load says why."""
    import multiprocessing

    config = SuiteConfig(model_path=model_path, model_label="random", size="tiny", device="cpu",
                         systems=("lpm", "no-hints", "transformers"))
    runs = mmlu.WORKLOADS[:2]
    here = run_suite(runs, config, log=lambda _: None).frame
    isolated = run_suite(runs, dataclasses.replace(config, isolate=True), log=lambda _: None)
    there = isolated.frame
    same = ["workload", "system", "programs", "hit_rate", "optimal_hit_rate", "prefill_tokens", "decode_tokens",
            "conformance", "note"]
    assert there[same].equals(here[same]) and len(there) == 6 and isolated.meta["isolated"]
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("sglbench-bench")]
    with pytest.raises(RuntimeError, match="opening engine"):
        run_suite(runs[:1], dataclasses.replace(config, isolate=True, model_path="/nonexistent"), log=lambda _: None)


def test_runtime_report_includes_benchmark_results(rt, tmp_path):
    config = SuiteConfig(model_path=rt.config.model_path, model_label="random <model>", size="tiny", device="cpu",
                         systems=("lpm",))
    result = run_suite(mmlu.WORKLOADS[:1], config, log=lambda _: None)
    html = rt.report(str(tmp_path / "report.html"), bench=result).read_text()
    assert '<section id="bench"><h2>Benchmarks</h2><div class="sgl-bench">' in html
    assert "mmlu-gen" in html and "random &lt;model&gt;" in html and "random <model>" not in html
    # No address but XML namespace names (the SVG and XHTML namespaces are names, never fetched).
    assert not re.search(r"https?://(?!www\.w3\.org/)", html)


def test_an_unreachable_or_unsupported_endpoint_gives_a_message_not_a_row(model_path):
    logs: list[str] = []
    config = SuiteConfig(model_path=model_path, model_label="random", size="tiny", systems=(),
                         endpoint="http://localhost:1/v1")
    result = run_suite(mmlu.WORKLOADS[:1], config, log=logs.append)
    assert result.frame.empty and logs and "endpoint" in logs[0]


def test_an_openai_compatible_endpoint_is_a_baseline(rt):
    """sglbench's own server as the endpoint: a row of the same shape as the engine's, with no hit rate."""
    from sglbench.server.app import build_app

    with serving(build_app(rt, model_name="served")) as url:
        config = SuiteConfig(model_path=rt.config.model_path, model_label="random", size="tiny", device="cpu",
                             systems=("lpm",), endpoint=f"{url}/v1", endpoint_model="served")
        frame = run_suite(mmlu.WORKLOADS[:1], config, log=lambda _: None).frame
    assert list(frame["system"]) == ["sglbench (lpm)", f"endpoint ({url}/v1)"]
    served = frame.iloc[1]
    assert served["programs_s"] > 0 and served["decode_tokens"] != served["decode_tokens"]  # NaN: not measured


def test_cli_runs_a_workload(model_path, tmp_path, capsys):
    bench_main(["json-regex", "--size", "tiny", "--model", model_path, "--device", "cpu", "--systems", "lpm",
                "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "paper-json-regex-tiny.json").read_text())["rows"]
    assert [r["workload"] for r in rows] == ["json-regex"] and rows[0]["optimal_hit_rate"] is not None
    assert (tmp_path / "paper-json-regex-tiny.csv").exists()
    assert "json-regex" in capsys.readouterr().out
