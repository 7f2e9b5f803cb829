"""flax_fld.training.compile_log: every program JAX hands to XLA is recorded once, by name, with its phase."""

import jax
import jax.numpy as jnp

from flax_fld.training import compile_log


def test_a_program_is_recorded_when_compiled_and_not_when_reused():
    @jax.jit
    def scaled_sum_for_compile_log(x):
        return jnp.sum(x * 3.0)

    with compile_log.CompileLog(phase="first") as log:
        scaled_sum_for_compile_log(jnp.ones((5,))).block_until_ready()
        log.phase = "again"
        scaled_sum_for_compile_log(jnp.ones((5,))).block_until_ready()  # cached: nothing new
        scaled_sum_for_compile_log(jnp.ones((6,))).block_until_ready()  # a new shape: a new program
    names = [(program.phase, program.name) for program in log.programs]
    assert ("first", "jit(scaled_sum_for_compile_log)") in names
    assert [name for phase, name in names if phase == "again"].count("jit(scaled_sum_for_compile_log)") == 1
    assert log.count("first") >= 1 and log.summary().startswith(f"{len(log.programs)} XLA programs compiled")
    count = len(log.programs)
    jax.jit(lambda x: x + 1)(jnp.ones((3,))).block_until_ready()  # uninstalled: not recorded
    assert len(log.programs) == count


def test_the_process_log_is_one_listener_and_summarises_since_a_mark():
    log = compile_log.process_log()
    assert compile_log.process_log() is log
    x = jnp.ones((4, 3)).block_until_ready()
    mark = len(log.programs)
    jax.jit(lambda v: v * 7 - 1)(x).block_until_ready()
    assert log.summary(since=mark).startswith("1 XLA programs compiled so far")
