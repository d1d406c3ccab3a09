"""The peer systems of the paper suite (sglbench.bench.paper.peers): the seam with a fake peer (no peer
library needed), the conformance checks of every workload on right and wrong outputs, the goals, the
prompts peers send against the text sglbench sends, and a tiny run of each installed peer (Outlines,
Guidance, LMQL) on the default model."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from sglbench.bench.paper import (
    chat,
    hellaswag,
    json_regex,
    llm_judge,
    mmlu,
    skeleton_of_thought,
    tree_of_thought,
)
from sglbench.bench.paper.goals import goals
from sglbench.bench.paper.measure import (
    COLUMNS,
    SELECT_DECODED,
    SELECT_SCORED,
    ProgramOutput,
    conformance,
    measure_round_robin,
)
from sglbench.bench.paper.peers import PEERS, PeerSpec, open_peer, prompts
from sglbench.bench.paper.peers.base import (
    MISSING,
    PeerOutput,
    PeerSystem,
    StageClock,
    UnavailablePeer,
    chunks,
    cut_at,
)
from sglbench.bench.paper.report import results_html
from sglbench.bench.paper.runner import SYSTEMS, SuiteConfig, run_suite, summary
from sglbench.bench.paper.suite import WORKLOADS
from sglbench.bench.paper.systems import RuntimeSystem
from sglbench.lang.backend.runtime_backend import RuntimeBackend
from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.runtime import Runtime


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(make_random_checkpoint(tmp_path_factory.mktemp("peers"), family="llama", seed=5,
                                      max_position_embeddings=4096))


@pytest.fixture(scope="module")
def rt(model_path):
    runtime = Runtime(model_path, device="cpu")
    yield runtime
    runtime.shutdown()


def by_name(name: str):
    return next(w for w in WORKLOADS if w.name == name)


# ---------------------------------------------------------------------------- a fake peer
class FakePeer(PeerSystem):
    """Answers MMLU by the first (right=True) or a non-choice, stage-batched in pairs; fails on demand."""

    general_note = "fake: answers without a model"

    def __init__(self, right: bool = True, fail: bool = False):
        super().__init__("Fake", {"mmlu-select": self._select, "llm-judge-fixed": self._select},
                         {"json-regex": "no regexes here"})
        self.right, self.fail, self.calls = right, fail, 0
        self.fixed_length_reason = "cannot ignore eos"

    def _select(self, run, arguments) -> list[PeerOutput]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("the fake peer broke")
        clock = StageClock(len(arguments))
        for rows in chunks(len(arguments), 2):
            clock.served(rows)
        return clock.outputs([{"answer": " A" if self.right else "A?"} for _ in arguments])


def test_a_peer_is_timed_round_robin_beside_sglbench(rt):
    run = mmlu.WORKLOADS[1].run_for("tiny")  # mmlu-select
    peer = FakePeer()
    ours, theirs = (m.row() for m in measure_round_robin(run, [RuntimeSystem("sglbench (lpm)", rt), peer], repeats=2))
    assert peer.calls == 3  # warm-up, then one call per round
    assert tuple(theirs) == COLUMNS and theirs["system"] == "Fake" and theirs["programs"] == len(run.arguments)
    assert theirs["programs_s"] > 0 and 0 <= theirs["latency_p50_s"] <= theirs["latency_p90_s"]
    assert theirs["conformance"] == 1.0 and ours["conformance"] == 1.0
    assert theirs["note"] == f"{SELECT_DECODED}; fake: answers without a model"
    assert ours["note"] == SELECT_SCORED
    assert math.isnan(theirs["hit_rate"]) and math.isnan(theirs["decode_tokens"])


def test_wrong_outputs_lower_conformance(rt):
    run = mmlu.WORKLOADS[1].run_for("tiny")
    row = measure_round_robin(run, [FakePeer(right=False)])[0].row()
    assert row["conformance"] == 0.0 and row["programs_s"] > 0


def test_a_workload_the_peer_cannot_express_gets_a_row_saying_why():
    peer = FakePeer()
    json_row = measure_round_robin(json_regex.WORKLOADS[0].run_for("tiny"), [peer])[0].row()
    assert math.isnan(json_row["programs_s"]) and math.isnan(json_row["conformance"])
    assert json_row["note"] == "not expressible in Fake: no regexes here"
    assert json_row["programs"] == json_regex.SHAPES["tiny"].pages
    fixed = measure_round_robin(by_name("llm-judge-fixed").run_for("tiny"), [peer])[0].row()
    assert fixed["note"] == "not expressible in Fake: cannot ignore eos"
    other = measure_round_robin(by_name("react").run_for("tiny"), [peer])[0].row()
    assert other["note"] == "not expressible in Fake: no program written for this workload"
    assert peer.calls == 0


def test_a_failing_peer_is_a_row_and_the_others_are_still_measured(rt):
    run = mmlu.WORKLOADS[1].run_for("tiny")
    ours, broken = (m.row() for m in measure_round_robin(run, [RuntimeSystem("lpm", rt), FakePeer(fail=True)],
                                                         repeats=2))
    assert ours["programs_s"] > 0
    assert math.isnan(broken["programs_s"]) and broken["note"] == "failed: RuntimeError: the fake peer broke"


def test_sglbench_failures_still_raise(rt):
    class Broken(RuntimeSystem):
        def prepare(self, run):
            raise RuntimeError("engine broke")

    with pytest.raises(RuntimeError, match="engine broke"):
        measure_round_robin(mmlu.WORKLOADS[1].run_for("tiny"), [Broken("x", rt)])


def test_in_a_suite_a_workload_sglbench_cannot_run_is_a_row_and_the_rest_is_measured(tmp_path):
    # a 256-token context: HellaSwag's scored select (prefix + context + ending) does not fit, the decoded one does
    path = str(make_random_checkpoint(tmp_path, family="llama", seed=5, max_position_embeddings=256))
    config = SuiteConfig(model_path=path, model_label="random", size="tiny", device="cpu", systems=("lpm",))
    frame = run_suite([hellaswag.WORKLOADS[0], hellaswag.WORKLOADS[1]], config, log=lambda _: None).frame
    failed, ran = frame.iloc[0], frame.iloc[1]
    assert failed["workload"] == "hellaswag" and math.isnan(failed["programs_s"])
    assert failed["note"].startswith("failed: RuntimeError: hellaswag") and "the model's context is 256" in failed["note"]
    assert ran["workload"] == "hellaswag-decoded" and ran["programs_s"] > 0 and not ran["note"].startswith("failed")
    conform = goals(frame)[-1]
    assert conform.passed is False and "failed: sglbench (lpm) on hellaswag" in conform.detail


def test_a_suite_can_serve_a_context_past_the_models_as_sglang_allows(tmp_path, monkeypatch):
    path = str(make_random_checkpoint(tmp_path, family="llama", seed=5, max_position_embeddings=256))
    monkeypatch.setenv("SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN", "1")
    config = SuiteConfig(model_path=path, model_label="random", size="tiny", device="cpu", systems=("lpm",),
                         context_length=512)
    result = run_suite([hellaswag.WORKLOADS[0]], config, log=lambda _: None)
    row = result.frame.iloc[0]
    assert row["programs_s"] > 0 and row["conformance"] == 1.0 and result.meta["context_length"] == 512


def test_a_missing_or_broken_peer_is_reported_never_skipped(monkeypatch, model_path):
    monkeypatch.setitem(PEERS, "outlines", PeerSpec("sglbench_no_such_peer", "x", "X"))
    missing = open_peer("outlines", "Outlines", model_path, "cpu", torch.float32)
    assert missing.unavailable(mmlu.WORKLOADS[0].run_for("tiny")) == MISSING
    monkeypatch.setitem(PEERS, "guidance", PeerSpec("json", "sglbench.no_such_module", "X"))  # installed, breaks
    broken = open_peer("guidance", "Guidance", model_path, "cpu", torch.float32)
    assert broken.unavailable(mmlu.WORKLOADS[0].run_for("tiny")).startswith("unavailable: ModuleNotFoundError")
    config = SuiteConfig(model_path=model_path, model_label="random", size="tiny", device="cpu",
                         systems=("lpm", "outlines", "guidance"))
    result = run_suite(mmlu.WORKLOADS[1:2], config, log=lambda _: None)
    frame = result.frame
    assert list(frame["system"]) == ["sglbench (lpm)", "Outlines", "Guidance"]
    assert frame.iloc[1]["note"] == MISSING and frame.iloc[2]["note"].startswith("unavailable:")
    assert math.isnan(frame.iloc[1]["programs_s"])
    table = summary(frame)
    assert {"x_vs_outlines", "x_vs_guidance"} <= set(table.columns) and "x_vs_lmql" not in table.columns
    assert math.isnan(table.iloc[0]["x_vs_outlines"]) and table.iloc[0]["conformance"] == frame.iloc[0]["conformance"]
    html = results_html(result)
    assert "Outlines" in html and "x_vs_outlines" in html and "<h4>Goals</h4>" in html


def test_peers_are_not_run_unless_asked():
    config = SuiteConfig(model_path="x", model_label="x")
    assert not {"outlines", "guidance", "lmql"} & set(config.systems)
    assert {"outlines", "guidance", "lmql"} <= set(SYSTEMS)


# ---------------------------------------------------------------------------- goals
def _frame(rows):
    return pd.DataFrame([{**dict.fromkeys(COLUMNS, math.nan), "note": "", **r} for r in rows], columns=list(COLUMNS))


def test_goals_compare_sglbench_with_every_peer_that_ran():
    rows = [{"workload": w, "system": s, "programs_s": v, "conformance": c}
            for w, s, v, c in [("json-regex", "sglbench (lpm)", 30.0, 1.0), ("json-regex", "Outlines", 10.0, 1.0),
                               ("json-regex", "Guidance", 5.0, 1.0), ("llm-judge-fixed", "sglbench (lpm)", 10.0, 1.0),
                               ("llm-judge-fixed", "Outlines", 6.0, 1.0)]]
    rows.append({"workload": "llm-judge-fixed", "system": "Guidance", "note": "not expressible in Guidance: eos"})
    checked = {g.text: g for g in goals(_frame(rows))}
    assert checked["sglbench >= 3x Guidance on every workload it runs"].passed is True
    outlines = checked["sglbench >= 3x Outlines on every workload it runs"]
    assert outlines.passed is False and "lowest 1.67x on llm-judge-fixed" in outlines.detail
    assert checked["sglbench >= 2x Outlines on JSON and decode-heavy fork-join"].passed is False
    assert checked["conformance 100 % for every system"].passed is True
    assert all(g.line().startswith(("PASS", "FAIL")) for g in checked.values())


def test_goals_fail_on_non_conforming_or_failed_systems():
    rows = [{"workload": "mmlu-select", "system": "sglbench (lpm)", "programs_s": 10.0, "conformance": 1.0},
            {"workload": "mmlu-select", "system": "Outlines", "programs_s": 1.0, "conformance": 0.5}]
    conform = goals(_frame(rows))[-1]
    assert conform.passed is False and "Outlines on mmlu-select: 50%" in conform.detail
    rows[1] = {"workload": "mmlu-select", "system": "Outlines", "note": "failed: RuntimeError: x"}
    conform = goals(_frame(rows))[-1]
    assert conform.passed is False and "failed: Outlines on mmlu-select" in conform.detail
    rows[0] = {"workload": "mmlu-select", "system": "sglbench (lpm)", "note": "failed: RuntimeError: too long"}
    rows[1] = {"workload": "mmlu-select", "system": "Outlines", "programs_s": 1.0, "conformance": 1.0}
    checked = {g.text: g for g in goals(_frame(rows))}
    over = checked["sglbench >= 3x Outlines on every workload it runs"]
    assert over.passed is False and over.detail == "sglbench failed on mmlu-select"
    rows[1] = {"workload": "mmlu-select", "system": "LMQL", "note": MISSING}
    rows[0] = {"workload": "mmlu-select", "system": "sglbench (lpm)", "programs_s": 10.0, "conformance": 1.0}
    conform = goals(_frame(rows))[-1]
    assert conform.passed is True and "not run (see notes): LMQL" in conform.detail


# ---------------------------------------------------------------------------- conformance checks
def _check(workload: str, arguments: dict, outputs: dict, size: str = "tiny") -> bool:
    run = by_name(workload).run_for(size)
    return conformance(run.__class__(run.workload, run.program, (arguments,), run.options, run.conforms),
                       [ProgramOutput(outputs, 0.0)]) == 1.0


def test_choice_checks():
    args = mmlu.dataset(mmlu.SHAPES["tiny"])[0]
    assert _check("mmlu-select", args, {"answer": " C"}) and _check("mmlu-select-decoded", args, {"answer": " A"})
    assert not _check("mmlu-select", args, {"answer": "C"}) and not _check("mmlu-select", args, {"answer": " E"})
    assert by_name("mmlu-gen").run_for("tiny").conforms is None  # free text: no form to check
    assert not _check("mmlu-select", args, {})  # a missing output fails
    item = hellaswag.dataset(hellaswag.SHAPES["tiny"])[1][0]
    assert _check("hellaswag", item, {"ending": item["endings"][2]})
    assert not _check("hellaswag-decoded", item, {"ending": item["endings"][2].strip()})


def test_json_check():
    good = {"name": "Ashford", "country": "Belton ia", "founded": 1204, "population": 5000,
            "landmarks": ["Old Bridge", "Tower"]}
    record = json.dumps(good, indent=2).replace('[\n    "Old Bridge",\n    "Tower"\n  ]', '["Old Bridge", "Tower"]')
    assert _check("json-regex", {"page": "x"}, {"record": record})
    assert not _check("json-regex", {"page": "x"}, {"record": record.replace("1204", "12")})  # not the regex
    assert not _check("json-regex", {"page": "x"}, {"record": record[:-1]})
    assert not _check("json-regex", {"page": "x"}, {"record": json.dumps(good)})  # JSON, not the layout


def test_judge_tree_skeleton_chat_and_react_checks():
    assert _check("llm-judge", {}, {"grade": "B"}) and _check("llm-judge-fixed", {}, {"grade": "F"})
    assert not _check("llm-judge", {}, {"grade": "G"}) and not _check("llm-judge", {}, {"grade": "B+"})
    b = tree_of_thought.SHAPES["tiny"].branches
    tree = {"plan": ["p"] * b, "attempt": [["a"] * b] * b, "verdict": [["yes", "no"][:b]] * b}
    assert _check("tree-of-thought", {}, tree)
    assert not _check("tree-of-thought", {}, {**tree, "verdict": [["maybe"] * b] * b})
    assert not _check("tree-of-thought", {}, {**tree, "plan": ["p"] * (b + 1)})
    n = skeleton_of_thought.SHAPES["tiny"].points
    assert _check("skeleton-of-thought", {}, {"skeleton": "s", "point": ["x"] * n})
    assert not _check("skeleton-of-thought", {}, {"skeleton": "s", "point": ["x"] * (n - 1)})
    assert _check("chat-short", {"messages": ["a", "b"]}, {"answer_0": "x", "answer_1": ""})
    assert not _check("chat-short", {"messages": ["a", "b"]}, {"answer_0": "x"})
    steps = {"thought_1": " t", "action_1": " Search[x]", "thought_2": " u", "action_2": " Finish[y]"}
    assert _check("react", {"observations": ["o", "p"]}, steps)
    assert not _check("react", {"observations": ["o", "p"]}, {**steps, "thought_2": " u\nAction 2:"})


def test_helpers():
    assert [list(r) for r in chunks(5, 2)] == [[0, 1], [2, 3], [4]]
    assert cut_at("go on\nAction", "\n") == "go on" and cut_at("abc", None) == "abc"
    with pytest.raises(ValueError):
        chunks(3, 0)


# ---------------------------------------------------------------------------- the prompts peers send
def test_peer_prompts_are_the_text_sglbench_sends(rt):
    roles = prompts.Roles(RuntimeBackend(rt).get_chat_template())

    def one(workload: str):
        run = by_name(workload).run_for("tiny")
        state = run.program.run_batch([dict(run.arguments[0])], backend=rt, **run.options)[0]
        return run, run.arguments[0], state

    run, a, s = one("mmlu-gen")
    assert s.text() == prompts.mmlu(a) + s["answer"]
    run, a, s = one("skeleton-of-thought")  # gathered forks leave the parent's text alone
    assert s.text() == prompts.sot_skeleton(roles, run.params["shape"], a) + s["skeleton"] + roles.close("assistant")
    run, a, s = one("chat-short")
    history = ""
    for i, message in enumerate(a["messages"]):
        history = prompts.chat_turn(roles, history, message) + s[f"answer_{i}"] + roles.close("assistant")
    assert s.text() == history
    run, a, s = one("react")
    text = prompts.react_start(run.params["prefix"], a)
    for i, observation in enumerate(a["observations"], start=1):
        text += f"Thought {i}:{s[f'thought_{i}']}\nAction {i}:{s[f'action_{i}']}\nObservation {i}: {observation}\n"
    assert s.text() == text
    run, a, s = one("llm-judge")
    head = prompts.judge_head(roles, a)
    assert s.text().startswith(head) and s.text().endswith(llm_judge.MERGE + roles.close("user")
                                                            + roles.open("assistant") + s["grade"]
                                                            + roles.close("assistant"))
    run, a, s = one("tree-of-thought")
    assert s.text() == prompts.tot_head(roles, a)
    assert prompts.json_page({"page": "P"}) == json_regex.prompt("P")
    assert prompts.chat_turn(roles, "", "hi").startswith(roles.block("system", chat.SYSTEM))


# ---------------------------------------------------------------------------- the installed peers, tiny
PEER_WORKLOADS = ("mmlu-select-decoded", "llm-judge", "react")


@pytest.mark.parametrize("key", ["outlines", "guidance", "lmql"])
def test_an_installed_peer_runs_tiny_workloads_on_the_default_model(key):
    pytest.importorskip(PEERS[key].distribution)
    from sglbench.default_model import default_model_path

    path = default_model_path()
    peer = open_peer(key, SYSTEMS[key], path, "cpu", torch.float32, batch_size=4)
    assert not isinstance(peer, UnavailablePeer), peer.reason
    runtime = Runtime(path, device="cpu")
    try:
        for workload in PEER_WORKLOADS:
            run = by_name(workload).run_for("tiny")
            theirs = peer.prepare(run)(run.arguments)
            assert conformance(run, theirs) == 1.0, (workload, [o.outputs for o in theirs])
            assert all(o.latency_s > 0 for o in theirs)
            if workload == "mmlu-select-decoded":  # greedy decoding under the same grammar, the same prompt
                ours = run.program.run_batch([dict(a) for a in run.arguments], backend=runtime, **run.options)
                assert [o.outputs["answer"] for o in theirs] == [s["answer"] for s in ours]
        row = measure_round_robin(by_name("json-regex").run_for("tiny"), [peer])[0].row()
        assert row["conformance"] == 1.0 or row["note"].startswith("not expressible in LMQL")
    finally:
        runtime.shutdown()
        peer.close()
