"""The circuit lab's engine: logit lens, attribution, ablation, activation patching and steering on a
live model. Results are the plain values of ``neurodash.lab``.

Every intervention is batched: copies of one prompt are stacked in the batch dimension, and a hook
edits copy ``i`` only (``_Edit``). A batch whose edits all sit at layer ``L`` or later starts at
``L`` from the cached residual stream instead of the embedding (``Lab._run_from``): the layers before
``L`` would compute the cached values again. Every run stops at the final norm's input; the metric
needs only the answer's column(s) of the unembedding.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import Tensor

from neurodash.errors import NeurodashError
from neurodash.lab import (
    DENOISE,
    EMBED,
    MEAN,
    NOISE,
    RESAMPLE,
    ZERO,
    AblationResult,
    AttentionPatterns,
    Circuit,
    Component,
    LabPrompt,
    LogitAttribution,
    LogitLens,
    MeanActivations,
    PatchingResult,
    Prediction,
    PromptAnalysis,
    SteeringRun,
    SteeringSweep,
    gap_weighted_mean,
    head,
    mlp,
    neuron,
)
from precompute.models import LoadedModel, _stop_here

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PretrainedConfig

MAX_BATCH = 64  # copies per forward pass
ONE_TOKEN, RANDOM = "one-token", "random"  # the default corruptions
Hook = tuple[str, Callable[..., Tensor | None]]


@dataclass(frozen=True)
class _Cache:
    """One clean (or corrupted) run, batch dimension dropped."""

    resid_pre: Tensor  # [layer, pos, d_model]
    final: Tensor  # [pos, d_model]: ln_final.hook_in
    z: Tensor  # [layer, pos, head, d_head]
    pattern: Tensor  # [layer, head, q, k]
    mlp_out: Tensor  # [layer, pos, d_model]
    mlp_post: Tensor  # [layer, pos, d_mlp]


@dataclass(frozen=True)
class _Job:
    """One copy in a batched run: ``prompt`` run from ``base``'s residual stream (or ``resid``
    [pos, d_model] when given, at the start layer) with ``edits`` (their ``copy`` is ignored)."""

    prompt: LabPrompt
    base: _Cache
    edits: tuple[_Edit, ...] = ()
    resid: Tensor | None = None


@dataclass(frozen=True)
class _Edit:
    """Replace ``unit`` (a head of hook_z, a neuron of hook_post; None: all of it) of batch copy
    ``copy`` at ``hook`` with ``value`` at every position."""

    hook: str
    copy: int
    unit: int | None
    value: Tensor


class Lab:
    """The lab on one loaded model; ``forward_passes`` counts the (batched) forward passes run."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.bridge = cast("TransformerBridge", model.bridge)
        cfg = self.bridge.cfg
        if cfg.normalization_type != "RMS":
            raise NeurodashError(
                f"the lab supports RMSNorm models; {model.name} uses {cfg.normalization_type}"
            )
        self.n_layers, self.n_heads, self.n_ctx = cfg.n_layers, cfg.n_heads, cfg.n_ctx
        hf = cast(torch.nn.Module, self.bridge.original_model)  # the HF model, its modules bridged
        self._config = cast("PretrainedConfig", hf.config)
        self._rotary = hf.get_submodule("model.rotary_emb")
        self._layers = cast(torch.nn.ModuleList, hf.get_submodule("model.layers"))
        self._final_norm = hf.get_submodule("model.norm")
        self._lm_head = hf.get_submodule("lm_head")
        self._W_U = self.bridge.W_U.detach().float()
        self._W_O = self.bridge.W_O.detach().float()
        self._W_out = self.bridge.W_out.detach().float()
        self._norm_w = next(p for n, p in self.bridge.ln_final.named_parameters() if n.endswith("weight"))
        self._eps = float(cfg.eps)
        self._caches: dict[tuple[int, ...], _Cache] = {}
        self._words: list[int] | None = None
        self.forward_passes = 0

    # --- inputs ------------------------------------------------------------------------------
    def prompt(
        self,
        text: str,
        answer: str | None = None,
        counterfactual: str | None = None,
        corrupted: str | None = None,
        corruption: str = ONE_TOKEN,
        seed: int = 0,
    ) -> LabPrompt:
        """Tokenize and check one prompt. ``answer`` defaults to the model's top prediction;
        ``corrupted`` to ``corruption``: the last token replaced (ONE_TOKEN) or every token after
        BOS replaced (RANDOM) by random word tokens not in the prompt."""
        ids = self._prompt_ids(text, "prompt")
        answer_id = self._one_token(answer, "answer") if answer is not None else self._top_token(ids)
        counter_id = self._one_token(counterfactual, "counterfactual") if counterfactual is not None else None
        if corrupted is not None:
            corrupted_ids = self._prompt_ids(corrupted, "corrupted prompt")
            if len(corrupted_ids) != len(ids):
                raise NeurodashError(
                    f"corrupted prompt {corrupted!r} has {len(corrupted_ids) - 1} tokens, the prompt "
                    f"{text!r} {len(ids) - 1}: patching position by position needs equal lengths"
                )
        else:
            corrupted_ids = self._corrupt(ids, corruption, seed)
        return LabPrompt(
            text=text,
            token_ids=ids,
            tokens=self._pieces(ids),
            answer_id=answer_id,
            answer=self._decode(answer_id),
            corrupted_ids=corrupted_ids,
            corrupted_tokens=self._pieces(corrupted_ids),
            counterfactual_id=counter_id,
            counterfactual=None if counter_id is None else self._decode(counter_id),
        )

    def _prompt_ids(self, text: str, what: str) -> tuple[int, ...]:
        if not text.strip():
            raise NeurodashError(f"the {what} is empty")
        ids = self.model.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.model.bos_token_id
        ids = ([bos] if bos is not None else []) + list(ids)
        if len(ids) > self.n_ctx:
            raise NeurodashError(
                f"the {what} has {len(ids)} tokens; {self.model.name} reads at most {self.n_ctx}"
            )
        return tuple(int(i) for i in ids)

    def _one_token(self, text: str, what: str) -> int:
        ids = self.model.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = ", ".join(repr(p) for p in self._pieces(tuple(ids))) or "nothing"
            raise NeurodashError(f"the {what} {text!r} is not one token: it splits into {pieces}")
        return int(ids[0])

    def _corrupt(self, ids: tuple[int, ...], corruption: str, seed: int) -> tuple[int, ...]:
        rng = random.Random(seed)
        words = [w for w in self._word_tokens() if w not in ids]
        first = 1 if self.model.bos_token_id is not None else 0
        if corruption == ONE_TOKEN:
            return ids[:-1] + (rng.choice(words),)
        if corruption == RANDOM:
            return ids[:first] + tuple(rng.sample(words, len(ids) - first))
        raise NeurodashError(f"unknown corruption {corruption!r}: use {ONE_TOKEN!r} or {RANDOM!r}")

    def _word_tokens(self) -> list[int]:
        """Tokens that are a space and a short lowercase word: the pool random corruptions draw from."""
        if self._words is None:
            vocab = self.model.tokenizer.convert_ids_to_tokens(list(range(self.model.d_vocab)))
            self._words = [i for i, t in enumerate(vocab) if re.fullmatch("\u0120[a-z]{3,8}", t or "")]
        return self._words

    def _pieces(self, ids: tuple[int, ...]) -> tuple[str, ...]:
        return tuple(self.model.token_strings(ids))

    def _decode(self, token_id: int) -> str:
        return self.model.decode([token_id])

    # --- runs --------------------------------------------------------------------------------
    @torch.inference_mode()
    def cache(self, ids: tuple[int, ...]) -> _Cache:
        """The run of ``ids`` with every activation the lab reads (kept per prompt)."""
        if ids not in self._caches:
            L = self.n_layers
            names = {f"blocks.{i}.{h}" for i in range(L) for h in _CACHED}
            with self.bridge.hooks(fwd_hooks=[("ln_final.hook_in", _stop_here)]):  # returns its input
                final, run = self.bridge.run_with_cache(
                    torch.tensor([ids]), names_filter=lambda n: n in names
                )
            self.forward_passes += 1

            def stack(hook: str) -> Tensor:
                return torch.stack([run[f"blocks.{i}.{hook}"][0] for i in range(L)]).float()

            self._caches[ids] = _Cache(
                resid_pre=stack("hook_resid_pre"),
                final=final[0].float(),
                z=stack("attn.hook_z"),
                pattern=stack("attn.hook_pattern"),
                mlp_out=stack("hook_mlp_out"),
                mlp_post=stack("mlp.hook_post"),
            )
        return self._caches[ids]

    @torch.inference_mode()
    def _run_from(self, layer: int, resid: Tensor, hooks: Sequence[Hook] = ()) -> Tensor:
        """Blocks ``layer``.. on the residual stream ``resid`` [batch, pos, d_model] (what
        ``blocks.{layer}.hook_resid_pre`` holds), with ``hooks``: the final norm's input."""
        from transformers.masking_utils import create_causal_mask

        positions = torch.arange(resid.shape[1])[None]
        rotary = self._rotary(resid, position_ids=positions)
        mask = create_causal_mask(
            config=self._config,
            inputs_embeds=resid,
            attention_mask=None,
            cache=None,
            position_ids=positions,
        )
        with self.bridge.hooks(fwd_hooks=list(hooks)):
            for block in self._layers[layer:]:
                out = block(resid, attention_mask=mask, position_embeddings=rotary, position_ids=positions)
                resid = out[0] if isinstance(out, tuple) else out
        self.forward_passes += 1
        return resid

    @torch.inference_mode()
    def _normed(self, x: Tensor) -> Tensor:
        """The final RMSNorm, as the model computes it."""
        return self._final_norm(x)

    @torch.inference_mode()
    def _logits(self, x: Tensor) -> Tensor:
        return self._lm_head(self._normed(x)).float()

    @torch.inference_mode()
    def _metric_direction(self, prompt: LabPrompt) -> Tensor:
        u = self._W_U[:, prompt.answer_id]
        return u if prompt.counterfactual_id is None else u - self._W_U[:, prompt.counterfactual_id]

    @torch.inference_mode()
    def _metric(self, prompt: LabPrompt, final: Tensor) -> Tensor:
        """The metric of each copy from the final norm's input [batch, pos, d_model]."""
        return self._normed(final[:, -1]).float() @ self._metric_direction(prompt)

    def metrics(self, prompt: LabPrompt) -> tuple[float, float]:
        """(clean, corrupted): the metric on the prompt and on its corrupted twin."""
        clean, corrupted = self.cache(prompt.token_ids), self.cache(prompt.corrupted_ids)
        return float(self._metric(prompt, clean.final[None])), float(
            self._metric(prompt, corrupted.final[None])
        )

    def _top_token(self, ids: tuple[int, ...]) -> int:
        return int(self._logits(self.cache(ids).final[-1]).argmax())

    # --- reading one clean run -----------------------------------------------------------------
    @torch.inference_mode()
    def analyse(self, prompt: LabPrompt, top: int = 10) -> PromptAnalysis:
        run = self.cache(prompt.token_ids)
        probs = self._logits(run.final[-1]).softmax(-1)
        best = probs.topk(top)
        predictions = tuple(
            Prediction(int(i), self._decode(int(i)), float(p)) for p, i in zip(best.values, best.indices)
        )
        return PromptAnalysis(
            prompt=prompt,
            predictions=predictions,
            lens=self.logit_lens(prompt),
            attribution=self.attribution(prompt),
            attention=AttentionPatterns(prompt.tokens, run.pattern.numpy()),
        )

    @torch.inference_mode()
    def logit_lens(self, prompt: LabPrompt) -> LogitLens:
        run = self.cache(prompt.token_ids)
        resid_post = torch.cat([run.resid_pre[1:], run.final[None]])
        answer_prob, answer_rank, top_ids, top_prob = [], [], [], []
        for layer_resid in resid_post:  # one layer at a time: [pos, d_vocab] at most
            logits = self._logits(layer_resid)
            probs = logits.softmax(-1)
            answer_logit = logits[:, prompt.answer_id : prompt.answer_id + 1]
            answer_prob.append(probs[:, prompt.answer_id])
            answer_rank.append((logits > answer_logit).sum(-1))
            top_prob.append(probs.max(-1).values)
            top_ids.append(logits.argmax(-1))
        ids = torch.stack(top_ids).numpy()
        return LogitLens(
            answer_prob=torch.stack(answer_prob).numpy(),
            answer_rank=torch.stack(answer_rank).numpy(),
            top_token_ids=ids,
            top_tokens=tuple(self._pieces(tuple(int(i) for i in row)) for row in ids),
            top_prob=torch.stack(top_prob).numpy(),
        )

    def _frozen_direction(self, prompt: LabPrompt, run: _Cache) -> tuple[Tensor, float]:
        """(the metric's direction in the final norm's input at the last position, the norm's scale
        there, frozen): what a component's output is dotted with for its direct attribution."""
        x = run.final[-1]
        scale = float(torch.rsqrt(x.pow(2).mean() + self._eps))
        return self._norm_w.float() * self._metric_direction(prompt) * scale, scale

    @torch.inference_mode()
    def attribution(self, prompt: LabPrompt) -> LogitAttribution:
        run = self.cache(prompt.token_ids)
        direction, scale = self._frozen_direction(prompt, run)
        head_out = torch.einsum("lhd,lhdm->lhm", run.z[:, -1], self._W_O)
        bias = self._bias_terms(prompt, direction)
        return LogitAttribution(
            heads=(head_out @ direction).numpy(),
            mlps=(run.mlp_out[:, -1] @ direction).numpy(),
            embed=float(run.resid_pre[0, -1] @ direction),
            bias=bias,
            metric=float(self._metric(prompt, run.final[None])),
            frozen_scale=scale,
        )

    @torch.inference_mode()
    def neuron_attribution(self, prompt: LabPrompt) -> np.ndarray:
        """``[layer, d_mlp]``: each MLP neuron's direct contribution to the metric at the last position
        (its activation times its W_out row, through the frozen final norm); a layer's neurons sum to
        its MLP's attribution less the MLP's output bias."""
        run = self.cache(prompt.token_ids)
        direction, _ = self._frozen_direction(prompt, run)
        return (run.mlp_post[:, -1] * (self._W_out @ direction)).numpy()

    def top_neurons(self, prompts: Sequence[LabPrompt], n: int) -> list[Component]:
        """The ``n`` neurons with the largest direct attribution (the absolute value of its mean over the
        prompts, in logits), largest first."""
        mean = np.abs(np.mean([self.neuron_attribution(p) for p in prompts], axis=0))
        order = np.argsort(-mean, axis=None)[:n]
        return [neuron(int(layer), int(i)) for layer, i in zip(*np.unravel_index(order, mean.shape))]

    def _bias_terms(self, prompt: LabPrompt, direction: Tensor) -> float:
        total = 0.0
        for name in ("b_O", "b_out"):
            try:
                bias = getattr(self.bridge, name)
            except (AttributeError, TypeError):  # the bridge stacks None for bias-free (Llama) layers
                continue
            total += float(bias.detach().float().sum(0) @ direction)
        b_U = self.bridge.b_U.detach().float()
        total += float(b_U[prompt.answer_id])
        if prompt.counterfactual_id is not None:
            total -= float(b_U[prompt.counterfactual_id])
        return total

    def components(self) -> list[Component]:
        """Every head and every MLP layer."""
        heads = [head(layer, h) for layer in range(self.n_layers) for h in range(self.n_heads)]
        return heads + [mlp(layer) for layer in range(self.n_layers)]

    # --- batched interventions -----------------------------------------------------------------
    def _value(
        self, comp: Component, kind: str, means: MeanActivations | None, source: _Cache | None
    ) -> _Edit:
        """The edit (copy 0) that replaces ``comp`` by zero, its mean, or its value in ``source``."""
        L, i = comp.layer, comp.index
        hook, unit, acts, mean = {
            "head": (f"blocks.{L}.attn.hook_z", i, lambda c: c.z[L, :, i], lambda m: m.z[L, i]),
            "mlp": (f"blocks.{L}.hook_mlp_out", None, lambda c: c.mlp_out[L], lambda m: m.mlp_out[L]),
            "neuron": (
                f"blocks.{L}.mlp.hook_post",
                i,
                lambda c: c.mlp_post[L, :, i],
                lambda m: m.mlp_post[L, i],
            ),
        }[comp.kind]
        if kind == ZERO:
            value = torch.zeros(())
        elif kind == MEAN:
            assert means is not None
            value = torch.as_tensor(mean(means)).float()
        else:
            assert source is not None
            value = acts(source)
        return _Edit(hook, 0, unit, value)

    def _edited_metrics(
        self,
        prompt: LabPrompt,
        base: _Cache,
        edit_sets: Sequence[Sequence[_Edit]],
        start: int | None = None,
        resid_start: Tensor | None = None,
    ) -> np.ndarray:
        """The metric of ``base``'s prompt run once per edit set (see ``_job_metrics``)."""
        jobs = [
            _Job(prompt, base, tuple(edits), None if resid_start is None else resid_start[i])
            for i, edits in enumerate(edit_sets)
        ]
        return self._job_metrics(jobs, start)

    def _job_metrics(self, jobs: Sequence[_Job], start: int | None = None) -> np.ndarray:
        """Each job's metric. Jobs of prompts of one length share batches of up to MAX_BATCH copies;
        a batch starts at the earliest layer its edits touch (``start`` when given)."""
        metrics = np.zeros(len(jobs))
        by_length: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            by_length.setdefault(job.base.final.shape[0], []).append(i)
        for members in by_length.values():
            for lo in range(0, len(members), MAX_BATCH):
                chunk = members[lo : lo + MAX_BATCH]
                finals = self._edited_finals([jobs[i] for i in chunk], start)
                for i, final in zip(chunk, finals):
                    metrics[i] = float(self._metric(jobs[i].prompt, final[None, None]))
        return metrics

    @torch.inference_mode()
    def _edited_finals(self, jobs: Sequence[_Job], start: int | None = None) -> Tensor:
        """One batched run of ``jobs`` (prompts of one length): the final norm's input at the last
        position, [copies, d_model]."""
        first = (
            start if start is not None else min((_layer(e.hook) for j in jobs for e in j.edits), default=0)
        )
        resid = torch.stack([j.base.resid_pre[first] if j.resid is None else j.resid for j in jobs])
        edits = [_Edit(e.hook, i, e.unit, e.value) for i, j in enumerate(jobs) for e in j.edits]
        return self._run_from(first, resid, _replacing_hooks(edits))[:, -1].float()

    def mean_activations(self, texts: Sequence[str]) -> MeanActivations:
        """Each head's hook_z, each MLP's output and neuron over every non-BOS position of ``texts``."""
        runs = [self.cache(self._prompt_ids(t, "reference prompt")) for t in texts]
        first = 1 if self.model.bos_token_id is not None else 0

        def mean(field: Callable[[_Cache], Tensor]) -> np.ndarray:
            return torch.cat([field(r)[:, first:] for r in runs], dim=1).mean(1).numpy()

        return MeanActivations(
            z=mean(lambda r: r.z),
            mlp_out=mean(lambda r: r.mlp_out),
            mlp_post=mean(lambda r: r.mlp_post),
            n_tokens=sum(r.final.shape[0] - first for r in runs),
        )

    def ablate(
        self,
        prompts: Sequence[LabPrompt],
        kind: str = ZERO,
        neurons: Sequence[Component] = (),
        means: MeanActivations | None = None,
        layers: Sequence[int] | None = None,
    ) -> AblationResult:
        """Every head, every MLP layer and ``neurons`` ablated one at a time (``kind``: ZERO; MEAN over
        ``means``, by default over the prompts themselves; RESAMPLE from the corrupted prompt). Only
        ``layers`` when given (the others' entries stay NaN)."""
        if kind == MEAN and means is None:
            means = self.mean_activations([p.text for p in prompts])
        L, H = self.n_layers, self.n_heads
        heads, mlps = np.full((len(prompts), L, H), np.nan), np.full((len(prompts), L), np.nan)
        neuron_effects, clean = np.full((len(prompts), len(neurons)), np.nan), np.zeros(len(prompts))
        runs = [self.cache(p.token_ids) for p in prompts]
        sources = [self.cache(p.corrupted_ids) if kind == RESAMPLE else None for p in prompts]
        for p, (prompt, run) in enumerate(zip(prompts, runs)):
            clean[p] = float(self._metric(prompt, run.final[None]))
        for layer in range(L) if layers is None else layers:
            at_layer = [n for n in neurons if n.layer == layer]
            comps = [head(layer, h) for h in range(H)] + [mlp(layer)] + at_layer
            jobs = [
                _Job(prompt, run, (self._value(c, kind, means, source),))
                for prompt, run, source in zip(prompts, runs, sources)
                for c in comps
            ]
            effects = self._job_metrics(jobs).reshape(len(prompts), len(comps)) - clean[:, None]
            heads[:, layer], mlps[:, layer] = effects[:, :H], effects[:, H]
            for n, column in zip(at_layer, effects[:, H + 1 :].T):
                neuron_effects[:, list(neurons).index(n)] = column
        return AblationResult(kind, clean, heads, mlps, tuple(neurons), neuron_effects)

    @torch.inference_mode()
    def ablated_logits(
        self,
        prompt: LabPrompt,
        components: Sequence[Component],
        kind: str = ZERO,
        means: MeanActivations | None = None,
    ) -> np.ndarray:
        """The last position's logits [d_vocab] with ``components`` ablated together (the batched path)."""
        source = self.cache(prompt.corrupted_ids) if kind == RESAMPLE else None
        edits = [self._value(c, kind, means, source) for c in components]
        final = self._edited_finals([_Job(prompt, self.cache(prompt.token_ids), tuple(edits))])
        return self._logits(final[0]).numpy()

    @torch.inference_mode()
    def ablated_metric(
        self,
        prompt: LabPrompt,
        components: Sequence[Component],
        kind: str = ZERO,
        means: MeanActivations | None = None,
    ) -> float:
        """The metric with ``components`` ablated together, in one plain (unbatched) run from the tokens."""
        source = self.cache(prompt.corrupted_ids) if kind == RESAMPLE else None
        edits = [self._value(c, kind, means, source) for c in components]
        with self.bridge.hooks(fwd_hooks=_replacing_hooks(edits) + [("ln_final.hook_in", _stop_here)]):
            final = self.bridge.run_with_hooks(torch.tensor([prompt.token_ids]))
        self.forward_passes += 1
        return float(self._metric(prompt, final))

    def patch(
        self,
        prompts: Sequence[LabPrompt],
        direction: str = DENOISE,
        resid: bool = True,
        components: bool = True,
        layers: Sequence[int] | None = None,
    ) -> PatchingResult:
        """Activation patching from one run into the other (DENOISE: clean into corrupted), one
        component per copy: the residual stream per layer x position (``resid``), each head's
        hook_z and each MLP's output at every position (``components``); only ``layers`` when given."""
        if direction not in (DENOISE, NOISE):
            raise NeurodashError(f"unknown patching direction {direction!r}: use {DENOISE!r} or {NOISE!r}")
        L, H = self.n_layers, self.n_heads
        clean_m, corrupt_m = np.zeros(len(prompts)), np.zeros(len(prompts))
        heads, mlps = np.full((len(prompts), L, H), np.nan), np.full((len(prompts), L), np.nan)
        pairs = []
        for p, prompt in enumerate(prompts):
            clean, corrupt = self.cache(prompt.token_ids), self.cache(prompt.corrupted_ids)
            pairs.append((clean, corrupt) if direction == DENOISE else (corrupt, clean))
            clean_m[p] = float(self._metric(prompt, clean.final[None]))
            corrupt_m[p] = float(self._metric(prompt, corrupt.final[None]))
        resid_maps = [np.full((L, len(p.token_ids)), np.nan) for p in prompts]
        for layer in range(L) if layers is None else layers:
            if resid:
                self._patch_resid(prompts, pairs, layer, resid_maps, clean_m, corrupt_m)
            if components:
                comps = [head(layer, h) for h in range(H)] + [mlp(layer)]
                jobs = [
                    _Job(prompt, base, (self._value(c, RESAMPLE, None, source),))
                    for prompt, (source, base) in zip(prompts, pairs)
                    for c in comps
                ]
                metrics = self._job_metrics(jobs).reshape(len(prompts), len(comps))
                for p in range(len(prompts)):
                    normalised = _normalise(metrics[p], float(clean_m[p]), float(corrupt_m[p]))
                    heads[p, layer], mlps[p, layer] = normalised[:H], normalised[H]
        return PatchingResult(direction, clean_m, corrupt_m, tuple(resid_maps), heads, mlps)

    def _patch_resid(
        self,
        prompts: Sequence[LabPrompt],
        pairs: Sequence[tuple[_Cache, _Cache]],
        layer: int,
        maps: list[np.ndarray],
        clean_m: np.ndarray,
        corrupt_m: np.ndarray,
    ) -> None:
        """Fill ``maps[p][layer]``: the source's residual stream at one position patched into the base
        run. A position where the two runs already agree (before the first changed token) is 0 without
        a run: the patch changes nothing."""
        jobs, where = [], []
        for p, (prompt, (source, base)) in enumerate(zip(prompts, pairs)):
            for pos in range(len(prompt.token_ids)):
                if torch.equal(source.resid_pre[layer, pos], base.resid_pre[layer, pos]):
                    maps[p][layer, pos] = 0.0 if abs(clean_m[p] - corrupt_m[p]) >= 1e-6 else np.nan
                    continue
                patched = base.resid_pre[layer].clone()
                patched[pos] = source.resid_pre[layer, pos]
                jobs.append(_Job(prompt, base, (), patched))
                where.append((p, pos))
        metrics = self._job_metrics(jobs, start=layer)
        for (p, pos), m in zip(where, metrics):
            maps[p][layer, pos] = _normalise(np.array([m]), float(clean_m[p]), float(corrupt_m[p]))[0]

    def patched_metric(
        self, prompt: LabPrompt, components: Sequence[Component], direction: str = DENOISE
    ) -> float:
        """The normalised metric with ``components`` (EMBED among them: the token embedding) patched
        together from one run into the other."""
        clean, corrupt = self.cache(prompt.token_ids), self.cache(prompt.corrupted_ids)
        source, base = (clean, corrupt) if direction == DENOISE else (corrupt, clean)
        start = (source if EMBED in components else base).resid_pre[0][None]  # [1, pos, d_model]
        edits = [self._value(c, RESAMPLE, None, source) for c in components if c != EMBED]
        metric = self._edited_metrics(prompt, base, [edits], 0, start)
        clean_m, corrupt_m = (float(self._metric(prompt, c.final[None])) for c in (clean, corrupt))
        return float(_normalise(metric, clean_m, corrupt_m)[0])

    # --- the minimal circuit -------------------------------------------------------------------
    def minimal_circuit(
        self,
        prompts: Sequence[LabPrompt],
        ablation: str = MEAN,
        threshold: float = 0.8,
        max_size: int = 40,
        single: AblationResult | None = None,
        means: MeanActivations | None = None,
        kinds: Sequence[str] = ("head", "mlp"),
    ) -> Circuit:
        """Greedy: heads and MLP layers by their single ablation effect (``single``, computed when not
        given); the shortest prefix that is both *necessary* (its joint ablation leaves <= 1 -
        ``threshold`` of the behaviour, 0 = corrupted run, 1 = clean) and *sufficient* (kept alone, with
        every other head and MLP mean-ablated, it recovers >= ``threshold``: its faithfulness); then
        members dropped one at a time while the rest still are both. Where no prefix is both, the
        shortest necessary one, pruned while necessary (``Circuit.sufficient`` then says False). A chain
        (a previous-token head feeding an induction head) needs the sufficiency test: ablating either
        head alone removes the behaviour. ``kinds=("head",)`` searches heads only (an MLP layer 0 that
        acts as a second embedding is otherwise often the whole answer)."""
        means = means or self.mean_activations([p.text for p in prompts])
        single = single or self.ablate(prompts, ablation, means=means)
        everything = self.n_layers * (self.n_heads + 1) + len(single.neurons)
        order = [c for c, _ in single.ranked(top=everything) if c.kind in kinds]
        prefixes = [order[:k] for k in range(1, min(max_size, len(order)) + 1)]
        kept, faithful = self._circuit_scores(prompts, prefixes, ablation, means)
        goal = 1 - threshold
        necessary = kept <= goal
        both = necessary & (faithful >= threshold)
        chosen = both if both.any() else necessary
        found = bool(necessary.any())
        at = int(np.argmax(chosen)) if found else len(prefixes) - 1
        members, kept_now, faithful_now = prefixes[at], float(kept[at]), float(faithful[at])
        while found and len(members) > 1:
            smaller = [[c for c in members if c != drop] for drop in members]
            kept_s, faithful_s = self._circuit_scores(prompts, smaller, ablation, means)
            holds = (kept_s <= goal) & ((faithful_s >= threshold) if both.any() else True)
            if not holds.any():
                break
            best = int(np.argmin(np.where(holds, kept_s, np.inf)))
            members, kept_now, faithful_now = smaller[best], float(kept_s[best]), float(faithful_s[best])
        return Circuit(tuple(sorted(members)), ablation, threshold, kept_now, faithful_now, found)

    def _circuit_scores(
        self,
        prompts: Sequence[LabPrompt],
        sets: Sequence[Sequence[Component]],
        kind: str,
        means: MeanActivations,
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each set, (kept, faithfulness), each averaged over prompts weighted by its gap
        (``gap_weighted_mean``). kept: the behaviour left when the set is ablated (``kind``),
        normalised (0 = corrupted, 1 = clean). faithfulness: the metric with every other head and MLP
        mean-ablated, normalised so that 0 is every head and MLP mean-ablated and 1 the clean run.
        One batched run per prompt."""
        everything = self.components()
        kept, faithful, gaps, mean_gaps = [], [], [], []
        for prompt in prompts:
            clean, corrupt = self.cache(prompt.token_ids), self.cache(prompt.corrupted_ids)
            source = corrupt if kind == RESAMPLE else None
            ablated = [[self._value(c, kind, means, source) for c in s] for s in sets]
            alone = [
                [self._value(c, MEAN, means, None) for c in everything if c not in s]
                for s in [[], *sets]  # the first: nothing kept, everything mean-ablated
            ]
            metrics = self._edited_metrics(prompt, clean, ablated + alone)
            nothing = float(metrics[len(sets)])
            clean_m, corrupt_m = (float(self._metric(prompt, r.final[None])) for r in (clean, corrupt))
            kept.append(_normalise(metrics[: len(sets)], clean_m, corrupt_m))
            faithful.append(_normalise(metrics[len(sets) + 1 :], clean_m, nothing))
            gaps.append(clean_m - corrupt_m)
            mean_gaps.append(clean_m - nothing)
        return (
            gap_weighted_mean(np.array(kept), np.array(gaps)),
            gap_weighted_mean(np.array(faithful), np.array(mean_gaps)),
        )

    # --- steering ------------------------------------------------------------------------------
    def neuron_direction(self, layer: int, index: int) -> tuple[str, np.ndarray]:
        """(hook, direction): a neuron's W_out row, added to the MLP's output."""
        return f"blocks.{layer}.hook_mlp_out", self._W_out[layer, index].numpy()

    def head_direction(self, prompt: LabPrompt, layer: int, index: int) -> tuple[str, np.ndarray]:
        """(hook, direction): the head's output (hook_z @ W_O) averaged over the prompt's non-BOS
        positions, unit length, added to the attention output."""
        run = self.cache(prompt.token_ids)
        first = 1 if self.model.bos_token_id is not None else 0
        out = (run.z[layer, first:, index] @ self._W_O[layer, index]).mean(0)
        return f"blocks.{layer}.attn.hook_out", (out / out.norm()).numpy()

    @torch.inference_mode()
    def steer(
        self, prompt: LabPrompt, hook: str, direction: np.ndarray, coefficient: float, n_tokens: int = 10
    ) -> SteeringRun:
        """Greedy generation with and without ``coefficient`` x ``direction`` added at ``hook``."""
        self.model.check_hooks([hook])
        vector = torch.as_tensor(direction).float() * coefficient
        steered = self._generate(prompt.token_ids, n_tokens, [(hook, _adding(vector[None]))])
        plain = self._generate(prompt.token_ids, n_tokens, [])
        return SteeringRun(
            hook=hook,
            coefficient=coefficient,
            steered_ids=steered,
            steered_text=self.model.decode(steered),
            unsteered_ids=plain,
            unsteered_text=self.model.decode(plain),
        )

    @torch.inference_mode()
    def _generate(self, ids: tuple[int, ...], n_tokens: int, hooks: list[Hook]) -> tuple[int, ...]:
        tokens = list(ids)
        for _ in range(n_tokens):
            with self.bridge.hooks(fwd_hooks=hooks + [("ln_final.hook_in", _stop_here)]):
                final = self.bridge.run_with_hooks(torch.tensor([tokens]))
            self.forward_passes += 1
            tokens.append(int(self._logits(final[0, -1]).argmax()))
        return tuple(tokens[len(ids) :])

    @torch.inference_mode()
    def steering_sweep(
        self,
        prompt: LabPrompt,
        hook: str,
        direction: np.ndarray,
        coefficients: Sequence[float],
        unit: tuple[str, int] | None = None,
    ) -> SteeringSweep:
        """One batched run, a copy per coefficient: the answer's probability at the last position and
        ``unit`` ((hook, index), read after the steering) there."""
        self.model.check_hooks([hook] + ([unit[0]] if unit else []))
        coefs = torch.tensor(list(coefficients), dtype=torch.float32)
        hooks: list[Hook] = [(hook, _adding(coefs[:, None, None] * torch.as_tensor(direction).float()))]
        seen: list[Tensor] = []
        if unit is not None:
            index = unit[1]
            hooks.append((unit[0], lambda t, hook: seen.append(t[:, -1, index].float().clone())))
        with self.bridge.hooks(fwd_hooks=hooks + [("ln_final.hook_in", _stop_here)]):
            final = self.bridge.run_with_hooks(torch.tensor([prompt.token_ids]).repeat(len(coefs), 1))
        self.forward_passes += 1
        probs = self._logits(final[:, -1]).softmax(-1)[:, prompt.answer_id]
        return SteeringSweep(
            hook, tuple(float(c) for c in coefs), probs.numpy(), seen[0].numpy() if seen else None
        )


_CACHED = ("hook_resid_pre", "attn.hook_z", "attn.hook_pattern", "hook_mlp_out", "mlp.hook_post")


def _layer(hook: str) -> int:
    return int(hook.split(".")[1])


def _replacing_hooks(edits: Sequence[_Edit]) -> list[Hook]:
    by_hook: dict[str, list[_Edit]] = {}
    for e in edits:
        by_hook.setdefault(e.hook, []).append(e)

    def replace(mine: list[_Edit]) -> Callable[..., Tensor]:
        def hook_fn(t: Tensor, hook: object) -> Tensor:
            t = t.clone()
            for e in mine:
                if e.unit is None:
                    t[e.copy] = e.value.to(t.dtype)
                else:
                    t[e.copy, :, e.unit] = e.value.to(t.dtype)
            return t

        return hook_fn

    return [(name, replace(mine)) for name, mine in by_hook.items()]


def _adding(vector: Tensor) -> Callable[..., Tensor]:
    """A hook adding ``vector`` ([batch or 1, 1, d] or [1, d]) at every position."""

    def hook_fn(t: Tensor, hook: object) -> Tensor:
        return t + vector.to(t.dtype).reshape(-1, 1, t.shape[-1])

    return hook_fn


def _normalise(metric: np.ndarray, clean: float, corrupted: float) -> np.ndarray:
    """(metric - corrupted) / (clean - corrupted): NaN where clean and corrupted runs agree."""
    gap = clean - corrupted
    if abs(gap) < 1e-6:
        return np.full_like(metric, np.nan, dtype=float)
    return (np.asarray(metric, dtype=float) - corrupted) / gap
