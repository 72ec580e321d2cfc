"""Where behaviour comes from: a local model on CPU, or an OpenAI-compatible HTTP endpoint.

Both answer the same three questions deterministically (greedy decoding, temperature 0, seed 0):

* ``complete(prompt, max_tokens)`` — the greedy continuation (text, and token ids when known);
* ``next_token(prompt)`` — next-token probabilities by token string (local: the full vocabulary; HTTP: the
  ``top_logprobs`` the server returns, or None when it returns none — ``transformers serve`` does not);
* ``hidden_states(texts)`` — local only: the last token's hidden state after every layer (REEF's input).

:class:`LocalBackend` builds the model from the source's ``config.json`` and safetensors bytes read through
the reading layer (``modellineage.reading.confine``): nothing of the folder is imported or unpickled, a
``model_type`` transformers does not know is refused (no remote code), and only ``tokenizer.json`` is
accepted as tokenizer. It holds the whole model, so it refuses weights over ``max_bytes``; serve a larger
model and name its ``endpoint`` in the plan.

:class:`HttpBackend` talks only to the endpoint the plan names: no proxies, no redirects, bounded response
size. Every request/response pair is cached on disk under the SHA-256 of the request (the API key is sent
as a header and is never part of the request body, the cache or the evidence) and listed in
:attr:`HttpBackend.exchanges` as (request SHA-256, SHA-256 of the response *content* — choices and
logprobs, not the server's ids and timestamps), so the evidence is identical across runs. A timeout,
a non-JSON answer or an HTTP error raises :class:`EndpointError` naming the endpoint and what happened.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modellineage.errors import UnsupportedFormat, describe
from modellineage.reading.boundary import EncodeClock, guard

#: Largest model (bytes of safetensors) the local backend loads whole.
LOCAL_MAX_BYTES = 2 << 30
#: Largest HTTP response read (bytes).
MAX_RESPONSE_BYTES = 8 << 20
#: How many top tokens to ask an endpoint for (OpenAI allows up to 20 for chat, 5 for legacy completions).
TOP_LOGPROBS = 5


class EndpointError(UnsupportedFormat):
    """An endpoint did not give a usable answer (timeout, HTTP error, malformed JSON): the measurement cannot be made."""


@dataclass(frozen=True)
class Completion:
    """A greedy continuation; ``token_ids`` only when the backend knows them."""

    text: str
    token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class NextToken:
    """Next-token probabilities by token string; ``residual`` = probability mass not listed (top-k answers)."""

    probs: dict
    residual: float = 0.0


def token_string(piece: str) -> str:
    """A vocabulary piece as text (byte-level ``Ġ``/``Ċ`` and SentencePiece ``▁`` mapped to space/newline), NFKC."""
    piece = piece.replace("\u2581", " ").replace("\u0120", " ").replace("\u010a", "\n")
    return unicodedata.normalize("NFKC", piece)


@contextmanager
def _one_thread(torch):
    """Run torch on one intra-op thread: tiny matmuls gain nothing from more, and on a shared machine
    oversubscribed threads cost 30x (measured: 1.5 s vs 52 s for one demo profile at load average 9)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LocalBackend:
    """A small causal LM run on CPU with transformers, built only from bytes the reading layer read."""

    kind = "local"

    def __init__(self, model, *, max_bytes: int = LOCAL_MAX_BYTES, batch_size: int = 16) -> None:
        import torch

        self.batch_size = batch_size
        self.name = model.name
        self.source = model.source
        self._torch = torch
        files = model.source.require_weights()
        total = sum(p.stat().st_size for p in files)
        if total > max_bytes:
            raise UnsupportedFormat(f"{model.source.root}: {total / 2**30:.1f} GiB of weights is more than the local "
                                    f"behaviour backend loads ({max_bytes / 2**30:.0f} GiB); serve the model and give "
                                    "its endpoint in the audit plan")
        config = model.config
        if config is None:
            raise UnsupportedFormat(f"{model.source.root}: no config.json, so the model cannot be run")
        layers = config.get("num_hidden_layers")
        if isinstance(layers, int) and not isinstance(layers, bool) and layers > len(model.shapes):
            raise UnsupportedFormat(f"{model.source.config_file}: num_hidden_layers = {layers:,} but the weights hold "
                                    f"{len(model.shapes):,} tensors; the model is not built")
        self.tokenizer = self._tokenizer(model.source)
        # the model folder's own regexes run at every encode: bounded in wall time (boundary.EncodeClock)
        self._clock = EncodeClock(next(p for p in model.source.tokenizer_files if p.name == "tokenizer.json"))
        self.model = self._build(model.source, config, files, total)
        self.eos_id = config.get("eos_token_id") if isinstance(config.get("eos_token_id"), int) else None
        self.pad_id = config.get("pad_token_id") if isinstance(config.get("pad_token_id"), int) else self.eos_id
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        n = int(self.model.config.vocab_size)
        self.pieces = [""] * n
        for piece, i in vocab.items():
            if 0 <= i < n:
                self.pieces[i] = piece
        self.special = {t.content for t in self.tokenizer.get_added_tokens_decoder().values() if t.special}
        self.tokenizer_sha256 = hashlib.sha256(
            json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()
        self.exchanges: list = []
        self._seen: dict = {}

    # -- building -------------------------------------------------------------------------------------------
    @staticmethod
    def _tokenizer(source):
        from tokenizers import Tokenizer

        from modellineage.reading.confine import read_text

        path = next((p for p in source.tokenizer_files if p.name == "tokenizer.json"), None)
        if path is None:
            raise UnsupportedFormat(f"{source.root}: the local behaviour backend needs tokenizer.json")
        with guard(path, "tokenizer.json cannot be loaded by tokenizers"):
            return Tokenizer.from_str(read_text(path))

    def _build(self, source, config: dict, files, total_bytes: int):
        import transformers
        from safetensors.torch import load as load_safetensors

        from modellineage.reading.confine import read_bytes

        model_type = config.get("model_type")
        if not isinstance(model_type, str) or model_type not in transformers.CONFIG_MAPPING:
            raise UnsupportedFormat(f"{source.config_file}: model_type {model_type!r} is not one transformers "
                                    "implements (remote code is never run)")
        clean = {k: v for k, v in config.items() if k not in ("auto_map", "architectures", "model_type")}
        with guard(source.config_file, "config.json cannot build a transformers config"):
            cfg = transformers.CONFIG_MAPPING[model_type](**clean)
            with self._torch.device("meta"):  # count first: memory follows the bytes present, not the declared sizes
                declared = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(cfg).parameters())
        if declared > total_bytes:  # at least one byte per parameter in any stored dtype
            raise UnsupportedFormat(f"{source.config_file}: the architecture declares {declared:,} parameters, more "
                                    f"than the {total_bytes:,} bytes of weights can hold; the model is not built")
        with guard(source.config_file, "config.json cannot build a transformers model"):
            model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=self._torch.float32)
        state = {}
        for path in files:
            with guard(path, "safetensors cannot be loaded"):
                state.update(load_safetensors(read_bytes(path)))
        state = {k: v.to(self._torch.float32) for k, v in state.items()}
        with guard(files[0], "weights do not fit the architecture of config.json"):
            missing, unexpected = model.load_state_dict(state, strict=False)
        tied = getattr(cfg, "tie_word_embeddings", False)
        missing = [m for m in missing if not (tied and m == "lm_head.weight")]
        if missing:
            raise UnsupportedFormat(f"{files[0]}: {len(missing)} parameters of the architecture are missing from the "
                                    f"weights (first: {missing[0]})")
        if tied:
            model.tie_weights()
        model.eval()
        return model

    # -- questions ------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._clock.encode(self.tokenizer, text).ids

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        """Greedy continuation, stopped at the end-of-sequence token; decoded without special tokens."""
        torch = self._torch
        from transformers import GenerationConfig

        ids = torch.tensor([self.encode(prompt)])
        config = GenerationConfig(do_sample=False, max_new_tokens=max_tokens, eos_token_id=self.eos_id,
                                  pad_token_id=self.pad_id)
        with torch.no_grad(), _one_thread(torch):
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        new = tuple(int(t) for t in out[0, ids.shape[1]:].tolist())
        return Completion(self.tokenizer.decode(list(new), skip_special_tokens=True), new)

    def complete_many(self, prompts, max_tokens: int, batch_size: int | None = None) -> list[Completion]:
        """Greedy continuations of many prompts, ``batch_size`` at a time (left-padded; default
        :attr:`batch_size`). Batching changes float32 summation order, which can flip a near-tied argmax,
        so ``batch_size=1`` reproduces a server that answers one request at a time bit for bit."""
        torch = self._torch
        from transformers import GenerationConfig

        size = batch_size or self.batch_size
        if size <= 1:
            return [self.complete(p, max_tokens) for p in prompts]
        config = GenerationConfig(do_sample=False, max_new_tokens=max_tokens, eos_token_id=self.eos_id,
                                  pad_token_id=self.pad_id)
        pad = self.pad_id if self.pad_id is not None else 0
        out: list[Completion] = []
        encoded = [self.encode(p) for p in prompts]
        for start in range(0, len(encoded), size):
            chunk = encoded[start:start + size]
            width = max(len(c) for c in chunk)
            ids = torch.tensor([[pad] * (width - len(c)) + c for c in chunk])
            mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk])
            with torch.no_grad(), _one_thread(torch):
                gen = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            for row in gen[:, width:].tolist():
                new = []
                for t in row:
                    if t == self.eos_id:
                        break
                    new.append(int(t))
                out.append(Completion(self.tokenizer.decode(new, skip_special_tokens=True), tuple(new)))
        return out

    def _forward(self, text: str):
        """Last-position logits and the last token's hidden state after every layer (one pass, kept per text)."""
        if text not in self._seen:
            torch = self._torch
            ids = torch.tensor([self.encode(text)])
            with torch.no_grad(), _one_thread(torch):
                out = self.model(input_ids=ids, output_hidden_states=True)
            self._seen[text] = (out.logits[0, -1].double(), [h[0, -1].double().numpy() for h in out.hidden_states])
        return self._seen[text]

    def next_token(self, prompt: str) -> NextToken:
        """The full next-token distribution, keyed by token string (special tokens left out)."""
        probs = self._torch.softmax(self._forward(prompt)[0], -1).numpy()
        out: dict[str, float] = {}
        for i, p in enumerate(probs):
            piece = self.pieces[i] if i < len(self.pieces) else ""
            if not piece or piece in self.special:
                continue
            key = token_string(piece)
            out[key] = out.get(key, 0.0) + float(p)
        return NextToken(out, 0.0)

    def hidden_states(self, texts) -> list[np.ndarray]:
        """Per layer (embeddings first), the last token's hidden state for every text: ``[n_texts, hidden]``."""
        rows = [self._forward(t)[1] for t in texts]
        return [np.stack([r[layer] for r in rows]) for layer in range(len(rows[0]))]

    def describe(self) -> dict:
        return {"backend": "local", "model": self.name, "tokenizer_sha256": self.tokenizer_sha256}


@dataclass
class HttpBackend:
    """An OpenAI-compatible server (`/v1/completions`, or `/v1/chat/completions` for chat prompts).

    Args:
        endpoint: base URL, e.g. ``http://127.0.0.1:8000`` (``/v1/...`` is appended).
        model: the model id sent in each request.
        api_key: sent as ``Authorization: Bearer``; never cached, never recorded.
        cache_dir: where request/response pairs are kept (None: no cache).
        timeout: seconds per request.
        chat: send refusal prompts to ``/v1/chat/completions`` (instruction-tuned models).
    """

    name: str
    endpoint: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    cache_dir: Path | None = None
    timeout: float = 30.0
    chat: bool = False
    retries: int = 3
    exchanges: list = field(default_factory=list)
    kind = "http"
    tokenizer_sha256 = None

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UnsupportedFormat(f"endpoint {self.endpoint!r}: needs an http:// or https:// URL with a host")
        self.endpoint = self.endpoint.rstrip("/")
        if self.endpoint.endswith("/v1"):
            self.endpoint = self.endpoint[:-3]
        # No proxy (the request goes to the named endpoint only) and no redirects (which could lead elsewhere).
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)

    # -- transport ------------------------------------------------------------------------------------------
    def _post(self, path: str, body: dict) -> dict:
        url = self.endpoint + path
        request_bytes = json.dumps({"url": url, "body": body}, sort_keys=True, ensure_ascii=False).encode()
        key = hashlib.sha256(request_bytes).hexdigest()
        cached = self.cache_dir / f"{key}.json" if self.cache_dir is not None else None
        answer = None
        if cached is not None and cached.is_file():
            try:
                answer = json.loads(cached.read_text(encoding="utf-8"))["response"]
            except (OSError, ValueError, KeyError, TypeError):
                answer = None  # a damaged cache entry is asked again
        if answer is None:
            answer = self._send(url, body)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"request": {"url": url, "body": body}, "response": answer},
                                          sort_keys=True, ensure_ascii=False), encoding="utf-8")
                os.replace(tmp, cached)
        content = {"choices": [{k: c.get(k) for k in ("text", "message", "logprobs", "finish_reason")}
                               for c in answer.get("choices", []) if isinstance(c, dict)]}
        self.exchanges.append((key, hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False)
                                                   .encode()).hexdigest()))
        return answer

    def _send(self, url: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    raw = resp.read(MAX_RESPONSE_BYTES + 1)
                break
            except urllib.error.HTTPError as exc:
                if exc.code == 429 and attempt < self.retries:  # rate limited: wait as told (bounded), then retry
                    time.sleep(_retry_after(exc.headers.get("Retry-After"), attempt))
                    continue
                raise EndpointError(f"endpoint {url} answered HTTP {exc.code} ({exc.reason})") from None
            except (socket.timeout, TimeoutError):
                raise EndpointError(f"endpoint {url} gave no answer within {self.timeout:g} s (timeout)") from None
            except urllib.error.URLError as exc:
                reason = exc.reason
                if isinstance(reason, (socket.timeout, TimeoutError)):
                    raise EndpointError(f"endpoint {url} gave no answer within {self.timeout:g} s (timeout)") from None
                raise EndpointError(f"endpoint {url} cannot be reached ({describe(reason) if isinstance(reason, BaseException) else reason})") from None
            except (OSError, ValueError) as exc:  # connection reset, bad status line
                raise EndpointError(f"endpoint {url} failed: {describe(exc)}") from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise EndpointError(f"endpoint {url} answered more than {MAX_RESPONSE_BYTES >> 20} MiB")
        try:
            answer = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise EndpointError(f"endpoint {url} answered malformed JSON ({len(raw)} bytes)") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list) or not answer["choices"] \
                or not isinstance(answer["choices"][0], dict):
            raise EndpointError(f"endpoint {url} answered JSON without choices[0]")
        return answer

    # -- questions ------------------------------------------------------------------------------------------
    def _body(self, **extra) -> dict:
        return {"model": self.model, "temperature": 0, "top_p": 1, "seed": 0, "stream": False, **extra}

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        answer = self._post("/v1/completions", self._body(prompt=prompt, max_tokens=max_tokens))
        text = answer["choices"][0].get("text")
        if not isinstance(text, str):
            raise EndpointError(f"endpoint {self.endpoint}/v1/completions answered without choices[0].text")
        return Completion(text, None)

    def chat_complete(self, message: str, max_tokens: int) -> Completion:
        body = self._body(messages=[{"role": "user", "content": message}], max_tokens=max_tokens)
        answer = self._post("/v1/chat/completions", body)
        msg = answer["choices"][0].get("message")
        text = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(text, str):
            raise EndpointError(f"endpoint {self.endpoint}/v1/chat/completions answered without choices[0].message.content")
        return Completion(text, None)

    def next_token(self, prompt: str) -> NextToken | None:
        """Top-k next-token probabilities, or None when the server gives no logprobs."""
        answer = self._post("/v1/completions", self._body(prompt=prompt, max_tokens=1, logprobs=TOP_LOGPROBS))
        lp = answer["choices"][0].get("logprobs")
        top = lp.get("top_logprobs") if isinstance(lp, dict) else None
        if not isinstance(top, list) or not top or not isinstance(top[0], dict):
            return None
        probs: dict[str, float] = {}
        for tok, value in top[0].items():
            if isinstance(tok, str) and isinstance(value, (int, float)) and math.isfinite(value):
                key = token_string(tok)
                probs[key] = probs.get(key, 0.0) + math.exp(min(0.0, float(value)))
        if not probs:
            return None
        return NextToken(probs, max(0.0, 1.0 - sum(probs.values())))

    def describe(self) -> dict:
        return {"backend": "http", "model": self.name, "endpoint": self.endpoint, "served_model": self.model}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - refuse every redirect
        raise EndpointError(f"endpoint {req.full_url} redirected (HTTP {code}); only the named endpoint is contacted")


def _retry_after(value, attempt: int) -> float:
    try:
        return min(30.0, max(0.0, float(value)))
    except (TypeError, ValueError):
        return min(30.0, 2.0 ** attempt)
