"""Helpers shared by the model tests (imported by name: pytest puts tests/ on sys.path)."""

import jax
import jax.numpy as jnp
import numpy as np


def synthetic_variables(model, shape, seed: int = 0):
    """Variables of init's shapes filled by numpy (He-scaled weights, identity BatchNorm).

    Compiling a model's init costs several times more than compiling its forward pass (one PRNG expansion
    per parameter), so tests that need values but not init itself use these.
    """
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))

    def fill(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return np.ones(leaf.shape, np.float32)
        if name in ("bias", "mean"):
            return np.zeros(leaf.shape, np.float32)
        fan_in = max(1, int(np.prod(leaf.shape[:-1])))
        return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def synthetic_fld_variables(model, image_shape) -> dict:
    """``fld.init_variables``' layout for an ``fld.FLDModel`` with numpy-filled values: the trainer's init path
    is tested once (test_fld), and compiling three inits per test worker would dominate a file's run time."""
    height, width, _ = image_shape
    variables = {"params": {}, "batch_stats": {}}
    shapes = {"ic1": image_shape, "ic2": image_shape, "classifier": (height, width, model.classifier_channels)}
    modules = {"classifier": model.classifier, "ic1": model.ic1, "ic2": model.ic2}
    for seed, name in enumerate(("ic1", "ic2", "classifier") if model.use_decouplers else ("classifier",)):
        filled = synthetic_variables(modules[name], (1, *shapes[name]), seed=seed)
        variables["params"][name] = filled["params"]
        variables["batch_stats"][name] = filled.get("batch_stats", {})
    return variables


def untrained_run(root, config):
    """``(workdir, info)``: a run directory under ``root`` for ``config`` holding a checkpoint of the initial
    state, all that ``train.load_for_inference`` needs (eval and predict tests check equalities that hold
    for any weights, so they skip training). ``config.data.data_dir`` must be set."""
    import os

    from flax_fld.data import input_pipeline
    from flax_fld.training import checkpointing, train
    from flax_fld.models import fld

    info = input_pipeline.prepare_data_source(config.data, config.data.data_dir).info
    model = fld.create_fld_model(config.model, len(info.class_names), info.image_shape[-1])
    state = train.create_train_state(config, model, info.image_shape, jax.random.key(1), steps_per_epoch=1)
    state = jax.tree.map(jnp.asarray, state)  # arrays, as after the first (pmapped) training step
    workdir = str(root / "run")
    os.makedirs(workdir)
    checkpointing.write_run_files(workdir, config, info)
    checkpointer = checkpointing.Checkpointer(workdir, keep=1, async_save=False)
    checkpointer.save(state, {"epoch": 0})
    checkpointer.close()
    return workdir, info



# compiler_options for a test program that runs many times (an attack's or integrated gradients' loop): the
# suite compiles at XLA's level 0 (tests/conftest.py), whose unvectorised loops run such programs several times
# slower; level 1 costs a few seconds more compiling and wins them back in running.
RUNS_MANY_TIMES = {"xla_backend_optimization_level": 1}
