"""The LLM explainer: a unit's shown examples sent to any OpenAI-compatible chat endpoint (vLLM,
llama.cpp's server, Ollama, ``transformers serve``, a hosted API), in the prompt style of OpenAI's
neuron-explainer (tab-separated tokens and activations scaled 0-10, then "the main thing this neuron
does is find"). Plain HTTP through urllib; the key, where the endpoint needs one, comes from
``$NEURODASH_LLM_API_KEY`` or ``$OPENAI_API_KEY``.

Its explanations are scored by the same simulation as the pattern explainer's; the simulator of a
text is keyword matching: it predicts "fires" on the tokens the explanation quotes
(``explain.quoted_patterns``), which the prompt asks for. An unreachable endpoint, a timeout and an
answer without an explanation each raise a ``NeurodashError`` of one line.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from neurodash.errors import NeurodashError
from neurodash.explain import Explanation, UnitTexts, Window, quoted_patterns, scored

SYSTEM = (
    "We're studying neurons in a neural network. Each neuron looks for some particular thing in a short "
    "document. Look at the parts of the document the neuron activates for and summarize in a single "
    "sentence what the neuron is looking for. Quote the tokens it fires on in backticks, like `import`. "
    "The activation format is token<tab>activation, activations go from 0 to 10, and most are 0."
)
MAX_EXAMPLES = 6
TOKENS_AFTER_PEAK = 3
WINDOW_TOKENS = 16
SIMULATOR = "quoted tokens"  # how an LLM explanation is simulated (see the module docstring)


@dataclass(frozen=True)
class LLMExplainer:
    url: str  # the endpoint's base, e.g. http://localhost:8000/v1 (or its /chat/completions)
    model: str
    timeout: float = 60.0
    max_tokens: int = 60

    @property
    def name(self) -> str:
        return f"llm:{self.model}"

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else f"{url}/chat/completions"

    def check(self) -> LLMExplainer:
        if not self.url.startswith(("http://", "https://")):
            raise NeurodashError(f"--explainer {self.url!r} is not an http:// or https:// URL")
        if not self.model.strip():
            raise NeurodashError("--explainer-model names the model the endpoint serves; it is empty")
        return self

    def explain(self, texts: UnitTexts, vocab: Sequence[str]) -> Explanation:
        """Ask for the unit's explanation, then score it by simulating the tokens it quotes."""
        text = self.ask(prompt(texts, vocab))
        patterns = quoted_patterns(text, vocab)
        return scored(texts, self.name, text, patterns, vocab, simulator=SIMULATOR, endpoint=self.url)

    def ask(self, user: str) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        return _explanation(self.endpoint, self._post(body))

    def _post(self, body: dict) -> bytes:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get("NEURODASH_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.endpoint, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:200].decode(errors="replace").replace("\n", " ")
            raise NeurodashError(
                f"the explainer at {self.endpoint} answered HTTP {e.code}: {detail}"
            ) from None
        except TimeoutError:
            raise NeurodashError(
                f"the explainer at {self.endpoint} did not answer within {self.timeout:g} s"
            ) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise NeurodashError(
                    f"the explainer at {self.endpoint} did not answer within {self.timeout:g} s"
                ) from None
            raise NeurodashError(f"cannot reach the explainer at {self.endpoint} ({e.reason})") from None
        except OSError as e:
            raise NeurodashError(f"cannot reach the explainer at {self.endpoint} ({e})") from None


def _explanation(endpoint: str, raw: bytes) -> str:
    """The first choice's message, one line; a clear error for anything else."""
    try:
        text = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        shown = raw[:80].decode(errors="replace").replace("\n", " ")
        raise NeurodashError(
            f"the explainer at {endpoint} answered without a chat completion: {shown!r}"
        ) from None
    if not isinstance(text, str) or not text.strip():
        raise NeurodashError(f"the explainer at {endpoint} answered with an empty explanation")
    return " ".join(text.split())


def prompt(texts: UnitTexts, vocab: Sequence[str]) -> str:
    """The shown examples in neuron-explainer's format: one token and its activation (0-10) a line."""
    parts = []
    for i, w in enumerate(texts.shown[:MAX_EXAMPLES]):
        parts.append(f"Example {i + 1}:\n<start>\n{_lines(w, texts.max_act, vocab)}\n<end>")
    return (
        "Neuron\nActivations:\n"
        + "\n\n".join(parts)
        + "\n\nExplanation of the neuron's behavior: the main thing this neuron does is find"
    )


def _lines(w: Window, max_act: float, vocab: Sequence[str]) -> str:
    peak = max(range(len(w.acts)), key=lambda i: w.acts[i])
    stop = min(len(w.acts), peak + 1 + TOKENS_AFTER_PEAK)
    start = max(0, stop - WINDOW_TOKENS)
    scale = 10 / max_act if max_act > 0 else 0.0
    return "\n".join(
        f"{_plain(vocab[t])}\t{max(0, round(a * scale))}"
        for t, a in zip(w.token_ids[start:stop], w.acts[start:stop])
    )


def _plain(token: str) -> str:
    """A token on one line of the prompt: newlines and tabs written out."""
    return token.replace("\n", "\\n").replace("\t", "\\t")
