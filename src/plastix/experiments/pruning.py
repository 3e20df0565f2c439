"""Pruning dormant neurons of a trained agent (Sokar et al. 2023, Figure 19 / Section 3).

Pruning = masking: every τ-dormant neuron's outgoing weights are set to 0, so it no longer
contributes to any output. The pruned and the unpruned agent are evaluated on the same greedy
episodes (same keys), a paired comparison per seed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from plastix.experiments.rl import RLConfig, build_agent, load_final
from plastix.interventions.redo import zero_outgoing


def pruning_evaluation(cell: RLConfig, path: str, repeats: int = 4) -> pd.DataFrame:
    """Per seed: evaluation return before and after pruning the dormant neurons, and the pruned fraction."""
    _, agent, topologies = build_agent(cell)
    topology = topologies["q"]
    carry, train = load_final(cell, path)

    def one_seed(c, key):
        k_score, k_eval = jax.random.split(key)
        diag = agent.diagnose(c.agent, train.scoring_batch(c.buffer, k_score))["q"]
        masks = {name: diag.layers[name].dormant for name in topology.names}
        pruned = c.agent._replace(
            online=c.agent.online.replace(params=zero_outgoing(c.agent.online.params, topology, masks))
        )
        keys = jax.random.split(k_eval, repeats)
        full = jnp.mean(jax.vmap(lambda k: train.evaluate(c.agent, k)["eval_return"])(keys))
        cut = jnp.mean(jax.vmap(lambda k: train.evaluate(pruned, k)["eval_return"])(keys))
        return full, cut, diag.dormant_fraction

    keys = jax.random.split(jax.random.PRNGKey(cell.seed + 7), cell.seeds)
    full, cut, frac = jax.jit(jax.vmap(one_seed))(carry, keys)
    return pd.DataFrame(
        {
            "seed": np.arange(cell.seeds),
            "return_unpruned": np.asarray(full),
            "return_pruned": np.asarray(cut),
            "pruned_fraction": np.asarray(frac),
        }
    )
