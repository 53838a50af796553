"""Activation maximization: search for short prompts that drive one unit hard, fluent and beyond the corpus.

The method is discrete prompt optimization in the spirit of EPO ("Fluent dreaming for language
models", Thompson et al. 2024), with GCG-style gradient-guided token swaps:

- **What is maximized**: the unit's activation at the prompt's *last* token, the prompt being
  ``length`` tokens after BOS (as every corpus window starts with BOS). A causal model's last token
  sees the whole prompt, and a corpus seed is the context that ends at its max token, so the two
  compare like for like with the unit's max over corpus tokens (``unit_stats(ref).max_act``).
- **Fluency**: the model's own mean cross-entropy on the prompt's tokens (nats per token, each
  predicted from BOS and the tokens before it).
- **Population**: one member per fluency penalty λ; member i maximizes ``act - λ_i · CE``, with
  ``λ_i = penalty_i · act_scale / 10`` (``act_scale`` is the unit's corpus max: at penalty 1, a nat
  of cross-entropy costs a tenth of it). The result is the Pareto frontier (activation against
  cross-entropy) of every prompt evaluated.
- **A step**: for each member, the gradient of the activation w.r.t. the one-hot tokens plus
  ``λ_i / length`` times the model's log-probability of each token at each position (the exact
  change of that position's cross-entropy term, read from the member's last full forward pass) give
  the top-k tokens per position; ``batch / population`` random single-token swaps are drawn from them.
  Every swap is *screened* by a forward pass that runs only up to the unit's hook (its activation is
  exact there) with its cross-entropy estimated from the member's log-probabilities; the best
  ``shortlist / population`` per member, by that member's objective, get the *full* forward pass
  (exact cross-entropy and the log-probabilities for the next step). Screening pays for hooks in
  the first 9/10 of the layers (``screening_pays``); deeper, every swap gets the full pass. Then every
  member takes the best prompt for its λ among the population and the evaluated swaps (EPO's
  shared selection). Only fully evaluated prompts are reported.
- **Starts**: the contexts ending at the unit's top corpus examples' max tokens (up to
  ``corpus_seeds`` members) and random prompts for the rest.
- **Deterministic** for a given seed (one ``torch.Generator`` draws every random choice).

For SAE features the gradient is taken through the encoder's pre-activation (an inactive TopK or
JumpReLU feature has no gradient of its own); screening and selection use the feature itself.

The optimizer (``optimize``) only needs an ``Objective``: an embedding matrix and three forward
functions, so that a toy torch model can drive it in tests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from neurodash.config import MaximizeConfig
from neurodash.errors import NeurodashError
from neurodash.results import FoundPrompt, Frontier
from neurodash.storage import Store
from neurodash.units import SAE_FEATURE, Source, UnitRef, parse_ref
from precompute.live.cache import cached_model, cached_sae
from precompute.models import LoadedModel, layer_of
from precompute.sae.load import LoadedSAE

NATS_PER_SCALE = 10.0  # at penalty 1, a nat of cross-entropy costs act_scale / 10
SCREEN_UP_TO = 0.9  # screen candidates with the truncated pass for hooks in this first part of the layers

Progress = Callable[[int, int], None]  # (steps done, steps in all)


class Objective(Protocol):
    """What the optimizer needs of a model and unit. Prompts are ``[batch, length]`` token ids."""

    embedding: Float[Tensor, "vocab d"]  # one-hot @ embedding = the input embeddings
    allowed: Bool[Tensor, " vocab"]  # the tokens a prompt may hold

    def surrogate(self, embeds: Float[Tensor, "batch length d"]) -> Float[Tensor, " batch"]:
        """A differentiable stand-in for the activation at the last token (the gradient's source)."""
        ...

    def screen(self, tokens: Int[Tensor, "batch length"]) -> Float[Tensor, " batch"]:
        """The activation at the last token, as cheaply as possible."""
        ...

    def evaluate(self, tokens: Int[Tensor, "batch length"]) -> tuple[Tensor, Tensor]:
        """(activation at every token ``[batch, length]``, log-probabilities ``[batch, length, vocab]``
        of each position's token given the ones before it)."""
        ...


@dataclass(frozen=True)
class Evaluated:
    tokens: tuple[int, ...]
    activation: float
    cross_entropy: float
    acts: tuple[float, ...]


# --- the optimizer --------------------------------------------------------------------------


def optimize(
    objective: Objective,
    cfg: MaximizeConfig,
    act_scale: float = 1.0,
    seeds: Sequence[Sequence[int]] = (),
    progress: Progress | None = None,
) -> list[Evaluated]:
    """The Pareto frontier (by rising cross-entropy) of every prompt evaluated."""
    gen = torch.Generator().manual_seed(cfg.seed)
    L, P = cfg.length, cfg.population
    lambdas = torch.tensor(cfg.penalties, dtype=torch.float32) * max(act_scale, 1e-6) / NATS_PER_SCALE
    allowed_ids = objective.allowed.nonzero().squeeze(1)
    if len(allowed_ids) == 0:
        raise NeurodashError("no token may appear in a prompt")
    tokens = _starts(seeds, cfg, allowed_ids, gen)
    archive: dict[tuple[int, ...], Evaluated] = {}
    act, ce, logp = _evaluate(objective, tokens, archive)
    for step in range(cfg.steps):
        grad = _token_gradients(objective, tokens)
        cands, approx_ce = _swaps(grad, logp, tokens, ce, lambdas, objective.allowed, cfg, gen)
        if cfg.shortlist < cfg.batch:  # screen: activation up to the hook, estimated cross-entropy
            screened = objective.screen(cands.reshape(-1, L)).reshape(P, -1).float()
            chosen = (screened - lambdas[:, None] * approx_ce).topk(cfg.shortlist // P, dim=1).indices
            cands = cands[torch.arange(P)[:, None], chosen]
        short = _unique_rows(cands.reshape(-1, L), exclude=tokens)
        if len(short):
            s_act, s_ce, s_logp = _evaluate(objective, short, archive)
            pool = torch.cat([tokens, short]), torch.cat([act, s_act]), torch.cat([ce, s_ce])
            pick = (pool[1][None] - lambdas[:, None] * pool[2][None]).argmax(
                dim=1
            )  # [P]: ties go to the first
            all_logp = torch.cat([logp, s_logp])
            tokens, act, ce, logp = pool[0][pick], pool[1][pick], pool[2][pick], all_logp[pick]
        if progress:
            progress(step + 1, cfg.steps)
    return pareto(archive.values())


def _starts(
    seeds: Sequence[Sequence[int]], cfg: MaximizeConfig, allowed_ids: Tensor, gen: torch.Generator
) -> Tensor:
    """Corpus seeds (their last ``length`` tokens, random tokens before a short one) and random prompts."""
    rows = []
    for seed in list(seeds)[: min(cfg.corpus_seeds, cfg.population)]:
        seed = list(seed)[-cfg.length :]
        rows.append(_random(cfg.length - len(seed), allowed_ids, gen) + seed)
    while len(rows) < cfg.population:
        rows.append(_random(cfg.length, allowed_ids, gen))
    return torch.tensor(rows, dtype=torch.long)


def _random(n: int, allowed_ids: Tensor, gen: torch.Generator) -> list[int]:
    return allowed_ids[torch.randint(len(allowed_ids), (n,), generator=gen)].tolist()


def _evaluate(objective: Objective, tokens: Tensor, archive: dict) -> tuple[Tensor, Tensor, Tensor]:
    """(activation at the last token, cross-entropy, log-probabilities) of each prompt; each kept in ``archive``."""
    acts, logp = objective.evaluate(tokens)
    acts, logp = acts.float(), logp.float()
    ce = -logp.gather(2, tokens[..., None]).squeeze(2).mean(1)
    for row, a, c in zip(tokens.tolist(), acts.tolist(), ce.tolist()):
        archive.setdefault(tuple(row), Evaluated(tuple(row), a[-1], c, tuple(a)))
    return acts[:, -1], ce, logp


def _token_gradients(objective: Objective, tokens: Tensor) -> Tensor:
    """d(surrogate activation) / d(one-hot token), ``[population, length, vocab]``."""
    with torch.enable_grad():
        onehot = (
            F.one_hot(tokens, objective.embedding.shape[0]).to(objective.embedding.dtype).requires_grad_()
        )
        out = objective.surrogate(onehot @ objective.embedding).sum()
        (grad,) = torch.autograd.grad(out, onehot)
    return grad.float()


def _swaps(
    grad: Tensor,
    logp: Tensor,
    tokens: Tensor,
    ce: Tensor,
    lambdas: Tensor,
    allowed: Tensor,
    cfg: MaximizeConfig,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Single-token swaps of each member, ``[P, n, length]``, and their estimated cross-entropy ``[P, n]``."""
    P, L = tokens.shape
    scores = grad + (lambdas[:, None, None] / L) * logp
    scores[:, :, ~allowed] = -torch.inf
    scores.scatter_(2, tokens[..., None], -torch.inf)  # a swap changes the token
    top = scores.topk(min(cfg.top_k, int(allowed.sum()) - 1 or 1), dim=2).indices  # [P, L, k]
    n = cfg.batch // P
    pos = torch.randint(L, (P, n), generator=gen)
    pick = torch.randint(top.shape[2], (P, n), generator=gen)
    members = torch.arange(P)[:, None]
    new = top[members, pos, pick]  # [P, n]
    cands = tokens[:, None, :].repeat(1, n, 1)
    cands[members, torch.arange(n)[None], pos] = new
    old_lp = logp[members, pos, tokens[members, pos]]
    approx_ce = ce[:, None] + (old_lp - logp[members, pos, new]) / L
    return cands, approx_ce


def _unique_rows(rows: Tensor, exclude: Tensor) -> Tensor:
    """``rows`` without repeats or rows of ``exclude``, first occurrences in order."""
    seen = {tuple(r) for r in exclude.tolist()}
    keep = []
    for i, r in enumerate(rows.tolist()):
        if tuple(r) not in seen:
            seen.add(tuple(r))
            keep.append(i)
    return rows[keep]


def pareto(points: Iterable[Evaluated]) -> list[Evaluated]:
    """The points no other point beats on both activation (higher) and cross-entropy (lower), by rising CE."""
    frontier: list[Evaluated] = []
    for p in sorted(points, key=lambda p: (p.cross_entropy, -p.activation, p.tokens)):
        if not frontier or p.activation > frontier[-1].activation:
            frontier.append(p)
    return frontier


# --- a unit of a real model -------------------------------------------------------------------


class UnitObjective:
    """A neuron (``hook`` index ``unit``) or an SAE feature (``sae`` on ``hook``) of a loaded model.

    Screening runs the model only up to the hook; evaluation runs it all (logits for the
    cross-entropy). Prompts get the model's BOS in front; without one the first token's
    log-probabilities are uniform.
    """

    def __init__(
        self, model: LoadedModel, hook: str, unit: int, sae: LoadedSAE | None = None, chunk: int = 64
    ):
        self.model, self.hook, self.unit, self.sae, self.chunk = model, hook, unit, sae, chunk
        self.embedding = model.embedding_matrix()
        vocab = self.embedding.shape[0]
        self.allowed = torch.zeros(vocab, dtype=torch.bool)
        self.allowed[: min(vocab, len(model.tokenizer))] = True
        self.allowed[[i for i in model.tokenizer.all_special_ids if i < vocab]] = False
        self.bos = model.bos_token_id

    def _read(self, hook_acts: Tensor) -> Tensor:
        """The unit at every position: ``[batch, pos, d] -> [batch, pos]``."""
        if self.sae is None:
            return hook_acts[..., self.unit]
        return self.sae.encode(hook_acts)[..., self.unit]

    def _ids(self, tokens: Tensor) -> Tensor:
        if self.bos is None:
            return tokens
        return torch.cat([torch.full((len(tokens), 1), self.bos, dtype=tokens.dtype), tokens], dim=1)

    def surrogate(self, embeds: Tensor) -> Tensor:
        if self.bos is not None:
            bos = self.embedding[self.bos].to(embeds.dtype).expand(len(embeds), 1, -1)
            embeds = torch.cat([bos, embeds], dim=1)
        last = self.model.run_to_hook(embeds, self.hook)[:, -1]
        if self.sae is None:
            return last[:, self.unit]
        return self.sae.pre_activations(last)[:, self.unit]

    @torch.inference_mode()
    def screen(self, tokens: Tensor) -> Tensor:
        out = [
            self._read(self.model.run_to_hook(self._ids(t), self.hook)[:, -1:])[:, 0]
            for t in tokens.split(self.chunk)
        ]
        return torch.cat(out).float().cpu()

    @torch.inference_mode()
    def evaluate(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        acts, logps = [], []
        for t in tokens.split(self.chunk):
            logits, hook_acts = self.model.logits_and_hook(self._ids(t), self.hook)
            if self.bos is not None:
                logp = logits[:, :-1].float().log_softmax(-1)
            else:
                uniform = torch.full_like(
                    logits[:, :1], -torch.log(torch.tensor(float(logits.shape[-1]))).item()
                )
                logp = torch.cat([uniform, logits[:, :-1].float().log_softmax(-1)], dim=1)
            acts.append(self._read(hook_acts)[:, -t.shape[1] :].float().cpu())
            logps.append(logp.cpu())
        return torch.cat(acts), torch.cat(logps)


# --- a unit of a store ------------------------------------------------------------------------


def unit_objective(model: LoadedModel, source: Source, unit: int) -> UnitObjective:
    """The objective for a unit of ``source``: a neuron, or a feature of the SAE the store names."""
    if source.kind != SAE_FEATURE:
        return UnitObjective(model, source.hook, unit)
    return UnitObjective(model, source.hook, unit, sae=cached_sae(sae_spec(source), model.device))


def sae_spec(source: Source) -> str:
    """The SAE folder or release a feature source was computed with (from the store's config)."""
    for spec in source.config.get("saes", []):
        if spec == source.sae or Path(spec).expanduser().name == source.sae:
            return spec
    raise NeurodashError(f"the store does not say where the SAE {source.sae!r} of {source.source_id} is")


def screening_pays(model: LoadedModel, hook: str) -> bool:
    """Whether screening candidates up to ``hook`` saves time over evaluating them all with the full
    forward pass. Screening ``batch`` and evaluating ``shortlist = batch / 4`` costs less than
    evaluating ``batch`` while the truncated pass costs under 3/4 of the full one. Measured on the
    default model (``benchmarks/maximize_quality.py``): 0.27 of it at layer 11, 0.71 at the last
    layer (the full pass adds the unembedding); so every hook but those in the last tenth."""
    return layer_of(hook) + 1 <= SCREEN_UP_TO * model.n_layers


def corpus_seeds(store: Store, ref: UnitRef, length: int, n: int, bos: int | None) -> list[list[int]]:
    """The contexts ending at the max token of the unit's top ``n`` corpus examples (at most ``length``
    tokens, BOS left out)."""
    seeds = []
    for e in store.examples(ref, ["top"])[:n]:
        ids = list(store.sequence(e.seq_id)[: e.pos + 1])
        if bos is not None and ids and ids[0] == bos:
            ids = ids[1:]
        if ids:
            seeds.append(ids[-length:])
    return seeds


def maximize(
    store_path: str | os.PathLike,
    ref: UnitRef | str,
    length: int = MaximizeConfig.length,
    steps: int = MaximizeConfig.steps,
    seed: int = 0,
    progress: Progress | None = None,
    config: MaximizeConfig | None = None,
    device: str = "cpu",
) -> Frontier:
    """Search prompts that drive the unit ``ref`` of the store at ``store_path`` hardest: its frontier.

    >>> f = maximize("demo.duckdb", "L15N42", steps=20)  # doctest: +SKIP
    >>> f.best.text, f.best.activation, f.corpus_max  # doctest: +SKIP
    """
    return next(
        iter(
            maximize_many(
                store_path,
                [ref],
                config or MaximizeConfig(length, steps, seed),
                lambda _ref: progress,
                device,
            )
        )
    )


def maximize_many(
    store_path: str | os.PathLike,
    refs: Sequence[UnitRef | str],
    config: MaximizeConfig | None = None,
    progress_for: Callable[[UnitRef], Progress | None] | None = None,
    device: str = "cpu",
) -> Iterator[Frontier]:
    """``maximize`` for several units of one store, loading the model once; units are checked first."""
    config = config or MaximizeConfig()
    with Store(store_path) as store:
        sources = store.sources()
        units = [parse_ref(str(r), sources) for r in refs]
        if not units:
            raise NeurodashError("name at least one unit")
        model_name = store.meta.get("model")
        if not model_name:
            raise NeurodashError(f"{store.path} does not say which model it was computed with")
        model = cached_model(model_name, device)
        for ref in units:
            started = time.perf_counter()
            source, stats = store.source(ref.source_id), store.unit_stats(ref)
            objective = unit_objective(model, source, ref.unit)
            unit_config = (
                config if screening_pays(model, source.hook) else replace(config, shortlist=config.batch)
            )
            seeds = corpus_seeds(store, ref, config.length, config.corpus_seeds, model.bos_token_id)
            act_scale = stats.max_act if stats.max_act > 0 else 1.0
            found = optimize(
                objective, unit_config, act_scale, seeds, progress_for(ref) if progress_for else None
            )
            prompts = tuple(
                FoundPrompt(
                    p.tokens,
                    store.tokens(p.tokens),
                    model.decode(p.tokens),
                    p.activation,
                    p.cross_entropy,
                    p.acts,
                )
                for p in found
            )
            settings = {k: v for k, v in asdict(unit_config).items() if k not in ("length", "steps", "seed")}
            yield Frontier(
                ref,
                model_name,
                config.length,
                config.steps,
                config.seed,
                float(stats.max_act),
                prompts,
                time.perf_counter() - started,
                settings,
            )
