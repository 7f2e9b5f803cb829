"""Where a finished run's test report spends its time: each compiled program and the seconds of every batch.

  FLAX_FLD_COMPILATION_CACHE=0 python benchmarks/test_report_parts.py WORKDIR

Loads WORKDIR's best checkpoint, then runs what the end of training runs (``evaluate.evaluate_split`` on the
test split, robust under both threat models, then ``evaluate.calibration_report``) and prints the programs
compiled on the way (``compile_log``) with the elapsed seconds after each batch of each pass.
"""

import sys
import time

from flax_fld.data import input_pipeline
from flax_fld.evaluation import evaluate
from flax_fld.training import compile_log, train


def main(workdir: str) -> None:
    log = compile_log.process_log()
    config, model, variables, _ = train.load_for_inference(workdir)
    data = input_pipeline.prepare_data_source(config.data, input_pipeline.resolve_data_dir(config.data, workdir))
    before, start, marks = len(log.programs), time.perf_counter(), []

    def on_batch(name: str, done: int, total: int) -> None:
        marks.append(f"{name}: batch {done}/{total} at {time.perf_counter() - start:.1f} s")

    evaluate.evaluate_split(model, variables, config, data, split="test", robust=True, both_threat_models=True,
                            on_batch=on_batch)
    evaluated = time.perf_counter() - start
    evaluate.calibration_report(model, variables, config, data, split="test")
    print(f"test split, both threat models: {evaluated:.1f} s; calibration: {time.perf_counter() - start - evaluated:.1f} s")
    for program in log.programs[before:]:
        print(f"  {program.name:32s} compile {program.compile_s:6.2f} s, lowering {program.lower_s:5.2f} s")
    print("\n".join(marks))


if __name__ == "__main__":
    main(sys.argv[1])
