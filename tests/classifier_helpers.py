"""Shared by the ResNet and R3D tests: deterministic "formula" weights torch can be given too,
and a few jitted training steps of a BatchNorm classifier on a fixed batch."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

# An 'rbg' key: XLA on CPU compiles a threefry init of ~60 parameter shapes about 5x slower.
KEY = jax.random.key(0, impl="rbg")


def num_elements(tree) -> int:
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree))


def formula_value(leaf: str, shape: tuple) -> np.ndarray:
    """A parameter or statistic as a fixed function of its indices, so torch can be given the same one.

    Kernels are in flax layout (*spatial, in, out), scaled like a kaiming init.
    """
    if leaf == "kernel":
        grids = np.ogrid[tuple(slice(n) for n in shape)]
        phase = 0.91 * grids[-1] + 1.73 * grids[-2] + sum(0.37 * (j + 1.6) * g for j, g in enumerate(grids[:-2]))
        return (np.cos(phase) * math.sqrt(4.0 / math.prod(shape[:-1]))).astype(np.float32)
    c = np.arange(shape[0])
    values = {"bias": 0.1 * np.sin(1.1 * c), "scale": 1 + 0.1 * np.cos(0.7 * c),
              "mean": 0.05 * np.cos(1.9 * c), "var": 1 + 0.2 * np.sin(0.5 * c) ** 2}
    return values[leaf].astype(np.float32)


def formula_input(shape: tuple) -> jax.Array:
    grids = np.ogrid[tuple(slice(n) for n in shape)]
    return jnp.asarray(np.sin(sum((0.3 + 0.41 * k) * g for k, g in enumerate(grids))), jnp.float32)


def formula_variables(model, x):
    shapes = jax.eval_shape(model.init, KEY, x)
    return unflatten_dict({path: jnp.asarray(formula_value(path[-1], leaf.shape))
                           for path, leaf in flatten_dict(shapes).items()})


def losses_over_steps(model, variables, x, optimizer: optax.GradientTransformation, steps: int = 6) -> list[float]:
    """Cross-entropy before each of ``steps`` jitted train-mode updates on one fixed batch."""
    labels = jnp.arange(x.shape[0]) % model.num_classes

    def loss_fn(params, batch_stats):
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                      mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, updates["batch_stats"]

    @jax.jit
    def step(params, batch_stats, opt_state):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)
    losses = []
    for _ in range(steps):
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state)
        losses.append(float(loss))
    return losses


def assert_batch_stats_semantics(model, variables, x, eval_apply) -> None:
    """Train mode returns updated running statistics; eval mode reads them, so an example's
    logits do not depend on the rest of its batch."""
    logits, updates = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert logits.shape == (x.shape[0], model.num_classes) and logits.dtype == jnp.float32
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
    old_mean = variables["batch_stats"]["stem_bn"]["mean"]
    assert not jnp.allclose(old_mean, updates["batch_stats"]["stem_bn"]["mean"])

    eval_logits = eval_apply(variables, x)
    assert jnp.array_equal(eval_logits, eval_apply(variables, x))
    other_batch = x.at[1:].set(2.0 * x[1:] + 1.0)
    assert jnp.allclose(eval_apply(variables, other_batch)[0], eval_logits[0], atol=1e-5)
