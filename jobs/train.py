"""Beacon training as a Ray job — `beacon train` on Ray Train (2 workers unless --workers says otherwise):

    ray job submit --working-dir . -- python -m jobs.train MODEL DATA --output-dir DIR --workers N [--gpu] \\
        [--set KEY=VALUE ...]

Every flag of `beacon train --help`; --set sets any TrainConfig field (JSON values), e.g.
--set max_steps=2000 --set beacon_ratio=[2,4,8,16,32]. The summary is printed as JSON.
"""

from beacon_cli.train_cmd import train
from jobs.entry import run_job

if __name__ == "__main__":
    run_job(train, "jobs.train", defaults={"workers": 2})
