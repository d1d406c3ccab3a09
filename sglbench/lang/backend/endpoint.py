"""`RuntimeEndpoint`: programs run on an SGLang server (or `sglbench serve`) through its native HTTP API.

The server tokenizes. `select` therefore learns where a choice's tokens begin from the token ids the
server returns: it caches the prompt (a prefill-only request that also reports the prompt's length),
then asks for logprobs from a few tokens before the end of the prompt, for the prompt alone and for
prompt + choice, and takes the first position where their ids differ.

    prompt ids        ... 17 42 | 8          (window starts _WINDOW tokens before the prompt's end)
    prompt+choice ids ... 17 42 | 93 5       choice_start = first differing position (93)

Every text prompt sent is recorded in a `PromptTree` (`prompt_tree.py`), a client-side radix tree that
`sglbench.viz.render_tree` draws like the engine's own cache (`backend.prompt_tree.snapshot()`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from sglbench.lang.backend.base import BaseBackend, CallContext
from sglbench.lang.backend.http_common import client_timings, load_tokenizer, resolve_chat_template
from sglbench.lang.backend.prompt_tree import PromptTree
from sglbench.lang.backend.scoring import decide, logprobs_with_text
from sglbench.lang.chat_template import ChatTemplate
from sglbench.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from sglbench.lang.ir import SglSamplingParams, decoding_options
from sglbench.runtime.sampling_params import sglang_request
from sglbench.sequences import common_prefix_len

logger = logging.getLogger(__name__)

_WINDOW = 3  # prompt tokens scored along with each choice, to find where the choice's tokens begin


def _error_message(response: httpx.Response) -> str:
    """The server's own words from an error response (SGLang, OpenAI and FastAPI shapes)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or error)
        return str(error)
    return str(body)


def _named_template(chat_template: ChatTemplate | str | None, name: str | None) -> ChatTemplate | str | None:
    """chat_template, or what SGLang's chat_template_name names: only its plain "default" ships here."""
    if name is None:
        return chat_template
    if chat_template is not None:
        raise ValueError("give chat_template or chat_template_name, not both")
    if name != "default":
        raise ValueError(f"chat_template_name={name!r}: sglbench does not ship SGLang's named chat templates (only "
                         "'default'); pass chat_template= the model's tokenizer folder or a ChatTemplate")
    return name


def _tls(verify: str | bool | None) -> ssl.SSLContext | bool:
    """httpx's verify from SGLang's (requests') one: a CA bundle path, or a bool."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return True if verify is None else bool(verify)


# ---------------------------------------------------------------------------- the backend
class RuntimeEndpoint(BaseBackend):
    """Runs programs on an SGLang-compatible server: `sglbench serve` or SGLang's `launch_server`.

    >>> backend = RuntimeEndpoint("http://127.0.0.1:30000", api_key="secret")
    >>> sgl.set_default_backend(backend)

    The first four parameters are SGLang's: verify is a CA bundle path (or False) for https;
    chat_template_name may only be "default" (SGLang's plain template: sglbench does not ship SGLang's named
    templates). tokenizer_path: a local tokenizer folder of the served model (default: the server's model
    path when it exists on this machine), used for the chat template and for logprob text. chat_template: a
    ChatTemplate or a tokenizer folder; default: the tokenizer's, else SGLang's plain template.
    """

    def __init__(self, base_url: str, api_key: str | None = None, verify: str | bool | None = None,
                 chat_template_name: str | None = None, *, chat_template: ChatTemplate | str | None = None,
                 tokenizer_path: str | None = None, timeout: float = 300.0, max_workers: int = 16):
        chat_template = _named_template(chat_template, chat_template_name)
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.base_url, headers=headers, verify=_tls(verify),
                                    timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                                    limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="sgl-endpoint")
        self._decode_lock = threading.Lock()
        self._prefix_ids: list[int] | None = None
        self.prompt_tree = PromptTree()
        try:  # reach the server now, so a wrong URL or key fails here
            self.model_info: dict[str, Any] = self._json("GET", "/get_model_info")
            self.tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path else self._local_tokenizer()
            self.chat_template = resolve_chat_template(chat_template, self.tokenizer)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"RuntimeEndpoint({self.base_url!r}, model={self.model_info.get('model_path')!r})"

    def close(self) -> None:
        """Close the HTTP connections and worker threads."""
        self._client.close()
        self._pool.shutdown(wait=False)

    def _local_tokenizer(self):
        """The served model's tokenizer when its folder (as the server reports it) exists on this machine."""
        for key in ("tokenizer_path", "model_path"):
            value = self.model_info.get(key)
            path = Path(str(value)) if value else None
            if path is not None and any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
                try:
                    return load_tokenizer(str(path))
                except Exception as exc:  # a folder we cannot read: fall back to the plain template
                    logger.warning("cannot load the tokenizer at %s (%s); using no local tokenizer", path, exc)
        return None

    # ------------------------------------------------------------------ HTTP
    @contextlib.contextmanager
    def _transport(self, path: str) -> Iterator[None]:
        """httpx's connection failures as errors that name the server."""
        try:
            yield
        except httpx.TimeoutException:
            raise TimeoutError(f"{self.base_url}{path} did not answer within {self.timeout} s") from None
        except httpx.TransportError as exc:  # refused, reset, bad URL
            raise ConnectionError(f"cannot connect to the server at {self.base_url} ({exc}); is it running? "
                                  "(e.g. `sglbench serve --model PATH --port 30000`)") from None

    def _check(self, response: httpx.Response, path: str) -> None:
        status = response.status_code
        if status < 400:
            return
        message = _error_message(response)
        if status in (401, 403):
            given = "no API key was given" if not self.api_key else "the API key given was refused"
            raise PermissionError(f"{self.base_url} refused {path} (HTTP {status}: {message}): {given}; pass "
                                  "api_key= matching the server's --api-key")
        if status in (400, 422):
            raise ValueError(f"{self.base_url} rejected the request: {message}")
        raise RuntimeError(f"{self.base_url}{path} failed (HTTP {status}): {message}")

    def _json(self, method: str, path: str, body: dict | None = None) -> Any:
        with self._transport(path):
            response = self._client.request(method, path, json=body)
        self._check(response, path)
        return response.json()

    def _map(self, fn: Callable[[Any], Any], items: list) -> list:
        return list(self._pool.map(fn, items))

    # ------------------------------------------------------------------ /generate
    def _body(self, text: str, p: SglSamplingParams) -> dict[str, Any]:
        """One /generate body; n is not sent (the client sends n requests that share the prompt)."""
        values = {**p.engine_values(), **decoding_options()}
        values.pop("n", None)
        body: dict[str, Any] = {"text": text, **sglang_request(values)}
        if p.return_text_in_logprobs and self.tokenizer is None:
            body["return_text_in_logprobs"] = True  # SGLang adds the text itself; with a tokenizer we do
        return body

    def _generate(self, body: dict) -> dict:
        """One blocking /generate call; the result's meta_info on this machine's clock."""
        body = {**body, "rid": uuid.uuid4().hex}
        ticket = self.prompt_tree.send(body["text"]) if "text" in body else None
        meta = None
        try:
            sent = time.time()
            result = self._json("POST", "/generate", body)
            meta = client_timings(result["meta_info"], sent, None, time.time())
            return {**result, "meta_info": meta}
        finally:
            if ticket is not None:
                self.prompt_tree.done(ticket, meta)

    def _prefill(self, text: str | None = None, input_ids: list[int] | None = None,
                 logprob_start_len: int | None = None) -> dict:
        """A prefill-only request (its KV stays in the server's cache); with logprob_start_len, the
        prompt's token logprobs from there. Returns meta_info."""
        body: dict[str, Any] = {"sampling_params": {"max_new_tokens": 0}}
        body.update({"text": text} if input_ids is None else {"input_ids": input_ids})
        if logprob_start_len is not None:
            body.update(return_logprob=True, logprob_start_len=logprob_start_len)
        return self._generate(body)["meta_info"]

    def _with_text(self, logprobs: list) -> list:
        """(logprob, id) -> (logprob, id, text), also inside top-logprob lists; unchanged without a tokenizer."""
        return logprobs if self.tokenizer is None else logprobs_with_text(logprobs, self._token_text)

    def _token_text(self, token_id: int) -> str:
        with self._decode_lock:  # the tokenizer is not safe to share between threads
            return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _meta(self, meta: dict, params: SglSamplingParams) -> dict:
        """A response's meta_info, logprobs with their text when asked."""
        return self._merge_chunk({}, meta, params)

    def _merge_chunk(self, so_far: dict, chunk: dict, params: SglSamplingParams) -> dict:
        """The meta_info so far after one streamed chunk's, logprobs with their text when asked. A chunk's
        output lists hold either its own new entries (SGLang's incremental streaming) or all so far (its
        default); output_token_logprobs_length, when sent, counts all so far, so the new ones are the last
        `length - seen` either way."""
        merged = {**so_far, **chunk}
        total = merged.pop("output_token_logprobs_length", None)
        for key in ("input_token_logprobs", "output_token_logprobs", "output_top_logprobs"):
            if not isinstance(chunk.get(key), list):
                continue
            before = so_far.get(key, [])
            if key == "input_token_logprobs":
                new = [] if before else chunk[key]  # the prompt's: once
            else:
                count = len(chunk[key]) - len(before) if total is None else max(total - len(before), 0)
                new = chunk[key][len(chunk[key]) - count:] if count > 0 else []
            if params.return_text_in_logprobs:
                new = self._with_text(new)
            merged[key] = before + new
        return merged

    # ------------------------------------------------------------------ BaseBackend
    def generate(self, ctx: CallContext, params: SglSamplingParams) -> tuple[str | list[str], dict | list[dict]]:
        body = self._body(ctx.text, params)
        n = params.n or 1
        if n == 1:
            result = self._generate(body)
            return result["text"], self._meta(result["meta_info"], params)
        self._prefill(ctx.text)  # the samples share the prompt through the server's cache
        results = self._map(self._generate, [body] * n)
        return [r["text"] for r in results], [self._meta(r["meta_info"], params) for r in results]

    def generate_stream(self, ctx: CallContext, params: SglSamplingParams) -> Iterator[tuple[str, dict | None]]:
        if (params.n or 1) != 1:
            raise ValueError("streaming supports n=1 only")
        body = {**self._body(ctx.text, params), "stream": True, "rid": uuid.uuid4().hex}
        ticket = self.prompt_tree.send(ctx.text)
        meta = None
        try:
            sent, first, so_far, last, merged = time.time(), None, "", None, {}
            with self._transport("/generate"), self._client.stream("POST", "/generate", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response, "/generate")
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    last = json.loads(data)
                    if "error" in last:
                        raise RuntimeError(f"{self.base_url} failed mid-stream: {last['error']}")
                    chunk_meta = last.get("meta_info") or {}
                    merged = self._merge_chunk(merged, chunk_meta, params)
                    text = last.get("text", "")
                    if len(text) > len(so_far):  # SGLang streams the text so far
                        first = first or time.time()
                        # meta_info that counts the tokens so far covers this text; a bare one ({id}) does not
                        yield text[len(so_far):], merged if "completion_tokens" in chunk_meta else None
                        so_far = text
            if last is None:
                raise RuntimeError(f"{self.base_url}/generate closed the stream without a result")
            meta = client_timings(merged, sent, first, time.time())
        finally:
            self.prompt_tree.done(ticket, meta)
        yield "", meta

    def select(self, ctx: CallContext, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        if temperature > 1e-5:
            raise ValueError(f"select scores choices greedily: temperature must be 0, got {temperature}")
        commit = self._prefill(ctx.text)  # caches the prompt and tells its length in tokens
        texts = [ctx.text + c for c in choices]
        lo = max(commit["prompt_tokens"] - _WINDOW, 0)
        scored, ids, common = self._score_window(ctx.text, texts, lo)
        if lo > 0 and any(c == lo for c in common):  # a choice re-tokenized the prompt before the window
            lo = 0
            scored, ids, common = self._score_window(ctx.text, texts, lo)
        prompt_meta, scored = scored[0], scored[1:]
        # Like the in-process choice_start: at least 1, and at most the last token (a choice has one).
        starts = [max(1, min(c, m["prompt_tokens"] - 1)) for c, m in zip(common, scored)]
        input_lps = [self._with_text(m["input_token_logprobs"][s - lo:]) for m, s in zip(scored, starts)]
        requests = [commit, prompt_meta, *scored]
        unconditional = None
        if choices_method.requires_unconditional_logprobs:
            prefix = self._server_prefix_ids()
            alone = self._map(lambda x: self._prefill(input_ids=prefix + x, logprob_start_len=len(prefix)),
                              [full[s - lo:] for full, s in zip(ids[1:], starts)])
            requests += alone
            unconditional = [self._with_text(m["input_token_logprobs"]) for m in alone]
        return decide(choices, choices_method, input_lps, unconditional, scored, requests)

    def _score_window(self, prompt: str, texts: list[str], lo: int) -> tuple[list[dict], list[list[int]], list[int]]:
        """Token logprobs from position lo of the prompt and of each text (prompt + choice): their meta_info,
        their token ids from lo, and for each text the length of the prefix it shares with the prompt."""
        scored = self._map(functools.partial(self._prefill, logprob_start_len=lo), [prompt, *texts])
        ids = [[t[1] for t in m["input_token_logprobs"]] for m in scored]
        return scored, ids, [lo + common_prefix_len(ids[0], full) for full in ids[1:]]

    def _server_prefix_ids(self) -> list[int]:
        """The token ids the server puts before any text (e.g. [bos]): the common start of two
        one-letter prompts' ids. Asked once."""
        if self._prefix_ids is None:
            a, b = (self._prefill(t, logprob_start_len=0)["input_token_logprobs"] for t in ("a", "b"))
            self._prefix_ids = [t[1] for t in a[:common_prefix_len([t[1] for t in a], [t[1] for t in b])]]
        return self._prefix_ids

    def get_chat_template(self) -> ChatTemplate:
        return self.chat_template

    def get_model_name(self) -> str:
        """The model path the server reports (/get_model_info), as SGLang's RuntimeEndpoint returns it."""
        return str(self.model_info["model_path"])

    def flush_cache(self) -> bool:
        with self._transport("/flush_cache"):
            response = self._client.post("/flush_cache")
        if response.status_code in (401, 403):
            self._check(response, "/flush_cache")
        ok = response.status_code < 400
        try:
            body = response.json()
        except ValueError:  # SGLang answers in plain text
            body = None
        if isinstance(body, dict):
            ok = ok and bool(body.get("success", True))
        if ok:
            self.prompt_tree.clear()
        return ok

    def get_server_info(self) -> dict[str, Any]:
        return {**self._json("GET", "/get_server_info"), "backend": "runtime_endpoint", "base_url": self.base_url,
                "model_info": dict(self.model_info), "chat_template": self.chat_template.name}

    # ------------------------------------------------------------------ hints
    def fork_program(self, ctx: CallContext, num_forks: int) -> None:
        if num_forks > 1 and ctx.text:
            self._prefill(ctx.text)

    def cache_prefix(self, prefix: str) -> None:
        self._prefill(prefix)
