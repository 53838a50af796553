"""The probe reads SAE features too: the store's SAE encoding its hook, in the same forward pass, the
same numbers as the unit page's own-text box."""

from __future__ import annotations

import numpy as np

from neurodash.storage import Store
from neurodash.units import SAE_FEATURE, UnitRef
from precompute.live.own_text import store_unit_on_text
from precompute.live.probe import probe_text

TEXT = "def f(x):\n    return x"


def test_probe_text_reads_a_stores_sae_features(tiny_store):
    with Store(tiny_store) as store:
        (sae,) = [s for s in store.sources() if s.kind == SAE_FEATURE]
        model = store.meta["model"]
    tokens, acts = probe_text(model, TEXT, [], saes=[sae])
    assert set(acts) == {sae.source_id} and acts[sae.source_id].shape == (len(tokens), sae.n_units)
    assert "".join(tokens) == TEXT
    for feature in (0, int(acts[sae.source_id].max(0).argmax())):
        alone = store_unit_on_text(tiny_store, UnitRef(sae.source_id, feature), TEXT)
        np.testing.assert_allclose(acts[sae.source_id][:, feature], alone.acts, rtol=1e-5, atol=1e-5)
