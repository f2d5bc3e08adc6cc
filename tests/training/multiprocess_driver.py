"""Driver for the multi-process test: trains the tiny config on a fixed dataset, writes metrics.jsonl.

Run under launch/local_multiprocess.sh (2 processes x 2 devices) or alone with 4 devices; every record of the
dataset is the same example, so the global batch is identical however the records are split over processes. The
end-of-run evaluations (4 held-out identities, one per device of the `data` axis; the held-out loss) run as in
the trainer.
Usage: python tests/training/multiprocess_driver.py WORKDIR
"""

import sys

import grain
import numpy as np


def main(workdir: str) -> None:
    from humandiff import config_lib, train
    from humandiff.training import input as train_input, runtime

    runtime.maybe_initialize_distributed()
    config = config_lib.load("configs/tiny_test.py", {"total_steps": 4, "log_every": 1, "ckpt.every": 4})
    config.batch_size = 4
    config.evals.heldout.num_videos = 4
    one = next(train_input.train_iterator(config, process_index=0, process_count=1))
    example = {k: np.asarray(v[0]) for k, v in one.items()}
    example["drop_cond"] = np.asarray(False)
    dataset = grain.MapDataset.source([example] * 8)
    train.train_and_evaluate(config, workdir, dataset=dataset)


if __name__ == "__main__":
    main(sys.argv[1])
