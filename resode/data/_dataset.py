"""The dataset record and reproducible batch sampling."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Arrays of one dataset, split into train and test (NumPy, float32 inputs).

    **Fields:**

    - `name`, `task` (``"classification"``, ``"regression"`` or ``"dynamics"``), `num_classes`
      (0 unless classification), `description`.
    - `x_train`, `y_train`, `x_test`, `y_test`: inputs with a leading example axis; labels are
      int32 class indices (classification), float32 targets (regression), or trajectories of shape
      ``(examples, len(ts), dim)`` starting at the input state (dynamics).
    - `ts`: the observation times of a dynamics set (None otherwise).
    - `adjacency`: the graph of a node-classification set (symmetric ``(nodes, nodes)``, float32;
      None otherwise). Such a set is one graph: `x_train` and `x_test` are both its node features,
      shape ``(1, nodes, features)``, and `y_train` / `y_test` hold one label per node, -1 where
      the node is not in that split (the training loop ignores -1 labels).
    """

    name: str
    task: str
    num_classes: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    description: str
    ts: np.ndarray | None = None
    adjacency: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input (without the example axis)."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, task={self.task!r}, train={self.x_train.shape}, "
            f"test={self.x_test.shape}, num_classes={self.num_classes})"
        )


def batch_indices(key: PRNGKeyArray, step, num_examples: int, batch_size: int) -> Array:
    """Indices of the batch at training step `step`: epochs of a key-determined permutation.

    Step s belongs to epoch ``s // (num_examples // batch_size)``, whose permutation is drawn
    from ``fold_in(key, epoch)``; batches within an epoch are consecutive slices of it, so every
    example is seen once per epoch (the remainder is dropped) and the order depends only on `key`
    and `step`. Jittable, with `step` traced: resuming at step s gives the same batches.
    """
    if not 0 < batch_size <= num_examples:
        raise ValueError(
            f"batch_size must be in [1, {num_examples}] (the number of examples), got {batch_size}."
        )
    per_epoch = num_examples // batch_size
    step = jnp.asarray(step)
    epoch, within = step // per_epoch, step % per_epoch
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    return jax.lax.dynamic_slice(perm, (within * batch_size,), (batch_size,))
