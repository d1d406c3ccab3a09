"""SGLang's frontend behaviours that its own programs rely on: `forks[i] += ...`, variables set on a finished
state, streamed chunks with their logprobs, `default_backend.endpoint.get_model_name()`, `verbosity`,
`separate_reasoning`, `copy`, `run(use_thread=False)`, tuples in `run_batch`, `trace`/`cache(backend=)`,
and clear errors for images and videos. A scripted backend pins the interpreter's logic; a random tiny
Llama in process and behind `sglbench serve` checks the real backends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

import sglbench as sgl
from sglbench.lang.backend import BaseBackend, CallContext
from sglbench.lang.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTemplate
from sglbench.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from sglbench.lang.ir import SglSamplingParams, decoding_options
from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.runtime import Runtime
from sglbench.runtime.sampling_params import FIELDS as SAMPLING_FIELDS
from sglbench.server.app import build_app
from tests.helpers import assert_pool_full, serving

API_KEY = "compat-key"


# ---------------------------------------------------------------------------- a scripted backend
class Scripted(BaseBackend):
    """Answers each gen with the next scripted text (the last one repeats), or with answer(prompt). Streams
    one character per token, with the meta_info so far on every other token and a final token without text
    (like an eos)."""

    def __init__(self, *outputs: str, answer: Callable[[str], str] | None = None):
        self.outputs = list(outputs or ("ok",))
        self.answer = answer
        self.params: list[SglSamplingParams] = []

    def _next(self, ctx: CallContext, params: SglSamplingParams) -> str:
        self.params.append(params)
        if self.answer is not None:
            return self.answer(ctx.text)
        return self.outputs.pop(0) if len(self.outputs) > 1 else self.outputs[0]

    @staticmethod
    def _meta(tokens: int, params: SglSamplingParams) -> dict:
        meta = {"prompt_tokens": 5, "completion_tokens": tokens}
        if params.return_logprob:
            meta["output_token_logprobs"] = [(-0.5, i, None) for i in range(tokens)]
        return meta

    def generate(self, ctx: CallContext, params: SglSamplingParams) -> tuple[str, dict]:
        text = self._next(ctx, params)
        return text, self._meta(len(text), params)

    def generate_stream(self, ctx: CallContext, params: SglSamplingParams) -> Iterator[tuple[str, dict | None]]:
        text = self._next(ctx, params)
        for i, char in enumerate(text):
            yield char, self._meta(i + 1, params) if i % 2 else None
        yield "", self._meta(len(text) + 1, params)

    def select(self, ctx: CallContext, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        return ChoicesDecision(choices[0], {"scores": [0.0] * len(choices)})

    def get_chat_template(self) -> ChatTemplate:
        return DEFAULT_CHAT_TEMPLATE

    def flush_cache(self) -> bool:
        return True

    def get_server_info(self) -> dict:
        return {"backend": "scripted"}

    def get_model_name(self) -> str:
        return "scripted"


def last_line(prompt: str) -> str:
    """An answer that tells which prompt it continues (forks run in any order)."""
    return prompt.rsplit("\n", 1)[-1]


def ok(state):
    assert state.error() is None, state.error()
    return state


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("compat"), family="llama", seed=6)


@pytest.fixture(scope="module")
def runtime(model_path):
    with Runtime(str(model_path), device="cpu", max_total_tokens=4096) as engine:
        sgl.set_default_backend(engine)
        yield engine
        sgl.global_config.default_backend = None


@pytest.fixture
def rt(runtime):
    """The runtime, checked for leaked KV after the test."""
    yield runtime
    assert_pool_full(runtime)


@pytest.fixture(scope="module")
def endpoint(runtime):
    """sglbench serve on loopback, reached by SGLang's RuntimeEndpoint(base_url, api_key, verify, chat_template_name)."""
    with serving(build_app(runtime, api_key=API_KEY, model_name="tiny", show_model_path=True)) as url:
        backend = sgl.RuntimeEndpoint(url, API_KEY, None, "default")
        yield backend
        backend.close()


# ---------------------------------------------------------------------------- programs as SGLang writes them
FORKS = 3


@sgl.function
def parallel_decoding(s, topic):
    s += "Give tips for " + topic + ".\n"
    for i in range(1, 1 + FORKS):
        s += f"{i}." + sgl.gen(max_tokens=4, stop=[".", "\n"]) + ".\n"
    forks = s.fork(FORKS)
    for i in range(FORKS):
        forks[i] += f"Now, I expand tip {i + 1}:\nTip {i + 1}:"
        forks[i] += sgl.gen("detailed_tip", max_tokens=5, stop=["\n\n"])
    forks.join()
    s += "Here are the tips:\n"
    for i in range(FORKS):
        s += f"Tip {i + 1}:" + forks[i]["detailed_tip"] + "\n"
    s += "\nIn summary," + sgl.gen("summary", max_tokens=4)


@sgl.function
def qa(s, question):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", return_logprob=True))


def stream_chunks(backend, **options) -> tuple[list[tuple[str, dict]], sgl.lang.interpreter.ProgramState]:
    """SGLang's test_stream_logprobs: qa streamed, its answer read as (text, meta_info) chunks."""

    async def collect():
        state = qa(question="Tell me about Hawaii.", stream=True, backend=backend, **options)
        return [c async for c in state.text_async_iter("answer", return_meta_data=True)], state

    return asyncio.run(collect())


def assert_sglang_chunks(chunks: list[tuple[str, dict]], completion_tokens: int) -> None:
    """SGLang's own checks on streamed chunks, and that the chunks add up to the whole answer."""
    assert chunks
    prev = 0
    for text, meta in chunks:
        assert text and "output_token_logprobs" in meta and "output_token_logprobs_length" in meta
        assert meta["completion_tokens"] == meta["output_token_logprobs_length"]
        assert len(meta["output_token_logprobs"]) == meta["completion_tokens"] - prev
        prev = meta["completion_tokens"]
    assert prev == completion_tokens


# ---------------------------------------------------------------------------- the interpreter, scripted
def test_stream_chunks_carry_their_own_logprobs():
    backend = Scripted("hello world")
    chunks, state = stream_chunks(backend)
    assert "".join(t for t, _ in chunks) == state["answer"] == "hello world"
    # Every other character came with meta_info; the final text-less token joined the last chunk.
    assert [t for t, _ in chunks] == ["he", "ll", "o ", "wo", "rl", "d"]
    assert_sglang_chunks(chunks, state.get_meta_info("answer")["completion_tokens"])
    assert state.get_meta_info("answer")["completion_tokens"] == 12


def test_variables_can_be_set_on_a_finished_state():
    @sgl.function
    def dtype_gen(s):
        s += "A: " + sgl.gen("int_res", dtype=int) + "\n"
        with s.copy() as c:
            c += "B: " + sgl.gen("inner", max_tokens=2)

    state = ok(dtype_gen.run(backend=Scripted("42")))
    meta = state.get_meta_info("int_res")
    state["int_res"] = int(state["int_res"])
    assert state["int_res"] == 42 and state.get_meta_info("int_res") == meta  # SGLang keeps the gen's meta_info
    assert state["inner"] == ["42"]  # copy() joined its fork: gather_variable
    streamed = dtype_gen.run(backend=Scripted("7"), stream=True)
    assert "".join(streamed.text_iter()) == "A: 7\n"  # the stream has ended
    streamed["int_res"] = int(streamed["int_res"])
    assert streamed["int_res"] == 7


def test_fork_items_are_added_to_in_place():
    backend = Scripted(answer=last_line)
    state = ok(parallel_decoding.run(topic="blogs", backend=backend))
    assert state["detailed_tip"] == ["Tip 1:", "Tip 2:", "Tip 3:"] and state["summary"] == "In summary,"
    assert "Tip 2:Tip 2:\n" in state.text()

    @sgl.function
    def replaces(s):
        forks = s.fork(2, position_ids_offset=[0, 0])
        forks[0] = forks[1]

    with pytest.raises(TypeError, match=r"forks\[0\] can only be added to"):
        replaces.run(backend=backend)


@pytest.mark.parametrize(("model_type", "output"), [
    ("qwen3", "<think>Recall the capital.</think>\n\nParis"),
    ("deepseek-r1", "Recall the capital.</think>Paris"),
])
def test_separate_reasoning(model_type, output):
    @sgl.function
    def think(s):
        s += sgl.user("Capital of France?")
        s += sgl.assistant(sgl.separate_reasoning(sgl.gen("answer", max_tokens=16), model_type=model_type))
        s += sgl.user("Thanks")

    state = ok(think.run(backend=Scripted(output)))
    assert state["answer"] == "Paris" and state["answer_reasoning_content"] == "Recall the capital."
    assert "think>" not in state.text() and "ASSISTANT:Paris\n" in state.text()
    assert state.messages()[1] == {"role": "assistant", "content": "Paris"}
    graph = think.trace()
    assert graph.count("separate_reasoning") == 1 and graph.complete
    streamed = think.run(backend=Scripted(output), stream=True)
    assert streamed["answer_reasoning_content"] == "Recall the capital." and "Recall" in streamed.text()


def test_images_and_videos_are_clear_errors_on_a_text_only_model():
    @sgl.function
    def video_qa(s):
        s += sgl.user(sgl.video("clip.mp4", 4) + "What happens?")
        s += sgl.assistant(sgl.gen("answer"))

    error = video_qa.run(backend=Scripted()).error()
    assert isinstance(error, ValueError) and "sgl.video('clip.mp4', 4)" in str(error) and "text-only" in str(error)


def test_use_thread_false_runs_each_expression_before_returning():
    reached = []

    @sgl.function
    def picture_then_more(s):
        s += "Look: " + sgl.gen("a", max_tokens=2)
        reached.append(s["a"])
        s += sgl.image("cat.png")
        reached.append("after the image")

    with pytest.raises(ValueError, match="text-only"):
        picture_then_more.run(backend=Scripted("x"), use_thread=False)
    assert reached == ["x"]
    state = ok(parallel_decoding.run(topic="t", backend=Scripted(answer=last_line), use_thread=False))
    assert state["detailed_tip"] == ["Tip 1:", "Tip 2:", "Tip 3:"]


def test_run_batch_takes_tuples_of_arguments():
    @sgl.function
    def greet(s, name, punctuation="!"):
        s += "Hi " + name + punctuation + sgl.gen("reply", max_tokens=2)

    states = greet.run_batch([("Ann",), ("Bob", "?"), {"name": "Cy"}], backend=Scripted("ok"))
    assert [ok(st).text() for st in states] == ["Hi Ann!ok", "Hi Bob?ok", "Hi Cy!ok"]
    assert greet.compile().run_batch([("Di", ".")], backend=Scripted("ok"))[0].text() == "Hi Di.ok"
    with pytest.raises(TypeError, match="greet: too many positional arguments"):
        greet.run_batch([("a", "b", "c")], backend=Scripted())
    assert greet.run_batch([], backend=Scripted()) == []


def test_verbosity_two_prints_each_programs_text(monkeypatch, capsys):
    monkeypatch.setattr(sgl.global_config, "verbosity", 2)
    sgl.function(lambda s: s.__iadd__("Hello " + sgl.gen("x"))).run(backend=Scripted("world"))
    assert capsys.readouterr().out == "Hello world\n"


def test_gen_keywords_reach_the_backend():
    backend = Scripted("1")

    @sgl.function
    def numbers(s):
        s += sgl.gen_int("a", stop_regex=r"\d{3}") + sgl.gen_string("b", stop_regex=["x", "y"])
        s += sgl.gen("c", min_tokens=2, max_tokens=5, stop_regex="z")

    ok(numbers.run(backend=backend, n=1))
    values = [p.engine_values() for p in backend.params]
    assert [v["stop_regex"] for v in values] == [r"\d{3}", ("x", "y"), "z"]
    assert [v["regex"] for v in values[:2]] == [sgl.lang.ir.REGEX_INT, sgl.lang.ir.REGEX_STR]
    assert (values[2]["min_new_tokens"], values[2]["max_new_tokens"]) == (2, 5)


def test_decoding_options_follow_global_config(monkeypatch):
    monkeypatch.setattr(sgl.global_config, "skip_special_tokens_in_output", False)
    monkeypatch.setattr(sgl.global_config, "spaces_between_special_tokens_in_out", False)
    options = decoding_options()
    assert options["skip_special_tokens"] is False and set(options) <= set(SAMPLING_FIELDS)
    assert options.get("spaces_between_special_tokens", False) is False


# ---------------------------------------------------------------------------- the real backends
def test_model_name_through_the_default_backends_endpoint(rt, model_path, endpoint):
    assert sgl.global_config.default_backend.endpoint.get_model_name() == str(model_path)
    assert endpoint.get_model_name() == str(model_path)  # what the server reports, as SGLang's client returns
    assert endpoint.endpoint is endpoint and endpoint.chat_template.name == "default"


def test_in_process_stream_chunks_add_up(rt):
    chunks, state = stream_chunks(None, temperature=0, max_new_tokens=12)
    assert "".join(t for t, _ in chunks) == state["answer"]
    assert_sglang_chunks(chunks, state.get_meta_info("answer")["completion_tokens"])


def test_endpoint_stream_chunks_add_up(endpoint, rt):
    chunks, state = stream_chunks(endpoint, temperature=0, max_new_tokens=12)
    assert "".join(t for t, _ in chunks) == state["answer"]
    assert_sglang_chunks(chunks, state.get_meta_info("answer")["completion_tokens"])


def test_trace_and_cache_take_a_backend(rt):
    @sgl.function
    def long_prefix(s, question):
        s += "You answer questions about arithmetic briefly and precisely, one number only.\n" * 2
        s += "Q: " + question + "\nA:" + sgl.gen("a", max_tokens=2)

    assert long_prefix.trace(backend=rt).count("gen") == 1
    with pytest.raises(TypeError, match="backend"):
        long_prefix.trace(backend=object())
    rt.flush_cache()
    prefix = long_prefix.cache(backend=rt)
    assert prefix.startswith("You answer") and prefix.endswith("Q: ")
    state = ok(long_prefix.run(question="1+1?", temperature=0))
    assert state.get_meta_info("a")["cached_tokens"] >= len(rt.tokenizer.encode(prefix)) - 2
    assert sgl.function(lambda s: s.__iadd__("short")).cache() == ""


def test_endpoint_signature_errors(endpoint):
    with pytest.raises(ValueError, match=r"chat_template_name='chatml'.*only 'default'"):
        sgl.RuntimeEndpoint(endpoint.base_url, API_KEY, chat_template_name="chatml")
    with pytest.raises(ValueError, match="not both"):
        sgl.RuntimeEndpoint(endpoint.base_url, API_KEY, chat_template_name="default", chat_template="default")


def test_openai_counts_token_usage(endpoint, rt):
    backend = sgl.OpenAI("tiny", False, base_url=f"{endpoint.base_url}/v1", api_key=API_KEY)
    try:
        assert backend.get_model_name() == "tiny" and backend.token_usage.prompt_tokens == 0
        state = ok(sgl.function(lambda s: s.__iadd__("Hello" + sgl.gen("x", max_tokens=3))).run(backend=backend))
        usage = backend.token_usage
        assert usage.prompt_tokens > 0 and usage.completion_tokens == state.get_meta_info("x")["completion_tokens"]
        usage.reset()
        assert (usage.prompt_tokens, usage.completion_tokens) == (0, 0)
    finally:
        backend.close()


def test_endpoint_reads_incremental_and_cumulative_stream_meta(endpoint):
    params = SglSamplingParams(return_logprob=True)
    lp = [[-1.0, token, None] for token in (5, 6, 7)]
    so_far: dict = {}
    for chunk in ({"completion_tokens": 2, "output_token_logprobs": lp[:2], "output_token_logprobs_length": 2},
                  {"completion_tokens": 3, "output_token_logprobs": lp[2:], "output_token_logprobs_length": 3}):
        so_far = endpoint._merge_chunk(so_far, chunk, params)  # SGLang's chunks: each its own logprobs
    assert so_far == {"completion_tokens": 3, "output_token_logprobs": lp}
    cumulative = endpoint._merge_chunk({"output_token_logprobs": lp[:1]}, {"output_token_logprobs": lp}, params)
    assert cumulative["output_token_logprobs"] == lp  # a server that resends all so far
