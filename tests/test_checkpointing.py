"""The two checkpoint slots of a run: the epoch's periodic save does not wait for the same epoch's best save,
and a resume writes the best checkpoint that a stopped run had not committed yet."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flax_fld.training import checkpointing
from flax_fld.training.train_state import TrainState


def tiny_state(step, value=0.0):
    state = TrainState.create(params={"w": jnp.full(3, value)}, batch_stats={}, tx=optax.sgd(0.1),
                              class_epsilon=jnp.zeros(4), class_beta=jnp.zeros(4), class_acc=jnp.zeros(4),
                              rng=jax.random.key(0), average=False, average_enabled=False)
    return state.replace(step=jnp.asarray(step))


def test_the_periodic_save_waits_only_for_an_earlier_epochs_best_save(tmp_path):
    # The wait for the same epoch's best save blocked training for a whole write, and orbax reported it an
    # epoch later as "Waiting for previous save to complete took N seconds" at the next best save.
    checkpointer = checkpointing.Checkpointer(str(tmp_path), keep=3, async_save=True)
    waits, wait = [], checkpointer.best.wait_until_finished
    checkpointer.best.wait_until_finished = lambda: (waits.append(1), wait())  # orbax's own save calls it too
    try:
        checkpointer.save(tiny_state(3), {"epoch": 1, "best_epoch": 1}, best=True)
        waits.clear()
        checkpointer.save(tiny_state(3), {"epoch": 1, "best_epoch": 1})
        assert waits == []
        checkpointer.save(tiny_state(6), {"epoch": 2, "best_epoch": 1})  # the best is epoch 1's, saved earlier
        assert waits == [1]
        checkpointer.wait()
        assert checkpointer.periodic.all_steps() == [3, 6] and checkpointer.best.all_steps() == [3]
    finally:
        checkpointer.close()


def test_a_resume_writes_the_best_checkpoint_a_stopped_run_had_not_committed(tmp_path):
    meta = {"epoch": 2, "best_epoch": 2, "best_value": [0.5]}
    first = checkpointing.Checkpointer(str(tmp_path), keep=3, async_save=False)
    first.save(tiny_state(3, 1.0), {"epoch": 1, "best_epoch": 1, "best_value": [0.4]}, best=True)
    first.save(tiny_state(6, 2.0), meta)  # stopped before the best save of step 6 was committed
    first.close()
    resumed = checkpointing.Checkpointer(str(tmp_path), keep=3, async_save=False)
    try:
        state, restored_meta = resumed.restore(tiny_state(0), "latest")
        resumed.complete_best(state, restored_meta)
        best_state, best_meta = resumed.restore(tiny_state(0), "best")
        assert resumed.best.all_steps() == [6] and best_meta["best_epoch"] == 2
        np.testing.assert_array_equal(best_state.params["w"], np.full(3, 2.0))
        saves = []
        resumed.save = lambda *args, **kwargs: saves.append(args)
        resumed.complete_best(state, restored_meta)  # already there: nothing written
        resumed.complete_best(state, dict(restored_meta, best_epoch=1))  # an earlier epoch was the best
        assert saves == []
    finally:
        resumed.close()
