"""Everything that needs torch: the only package that imports torch, TransformerLens, SAELens and
datasets. It reads a corpus and a model and writes a store; ``neurodash`` reads the store.

The layout, by job:

- ``pipeline/``: the precompute pass (``run_precompute``): stream the corpus through the model
  once, keep every unit's state (``accumulate``), turn it into the store's tables (``tables``);
- ``sae/``: sparse autoencoders in SAELens's format: loading (``load``) and training (``train``);
- ``live/``: features that run a live model on demand (the text ``probe``, activation
  ``maximize``), sharing one model cache per process (``cache``);
- ``ground_truth/``: toy models whose answers are known, for the ground-truth tests and benchmarks;
- ``models``: the one module that touches TransformerLens (``LoadedModel``, hook names);
- ``corpus``: the embedded corpus and local or hub datasets, packed into token windows;
- ``hub``: whether the Hugging Face hub is reachable.

Imports go one way: ``precompute`` imports ``neurodash`` (``config``, ``units``, ``storage``,
``errors``, ``results``) at module level; ``neurodash`` reaches ``precompute`` only lazily, at its
edges (CLI commands, the app's background jobs), and only through these entry points:

- ``precompute``: ``run_precompute``, ``PrecomputeConfig``, ``mlp_hook``;
- ``precompute.scale``: ``precompute_shard``, ``merge_states``, ``precompute_resumable`` (shards,
  their exact merge, checkpoints); ``precompute.distributed``: ``precompute_distributed`` (torchrun);
- ``precompute.sae``: ``train_sae``, ``load_sae`` and the rest of the SAE API;
- ``precompute.live.probe``: ``probe_text``, ``cached_model``, ``avoid_inherited_thread_pool``;
- ``precompute.live.maximize``: ``maximize``, ``maximize_many``.
"""

from neurodash.config import PrecomputeConfig
from neurodash.units import parse_layers
from precompute.models import mlp_hook
from precompute.pipeline import run_precompute

__all__ = ["PrecomputeConfig", "mlp_hook", "parse_layers", "run_precompute"]
