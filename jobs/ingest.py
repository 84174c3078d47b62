"""Ingestion as a Ray job — `beacon ingest`, its report printed as JSON:

    ray job submit --working-dir . -- python -m jobs.ingest CORPUS --db /shared/beacon_db \\
        [--gpus-per-actor 1 --actors 1:4] [--set KEY=VALUE ...]

Every flag of `beacon ingest --help`; --set sets any IngestConfig field (JSON values, or plain
strings), e.g. --set store_dtype=float8_e4m3fn. Inside `ray job submit` Ray is joined through
RAY_ADDRESS; run directly, Ray starts here. Give --db as a path every node can reach (a relative one
would land in the job's temporary working directory).
"""

from beacon_cli.ingest_cmd import ingest
from jobs.entry import run_job

if __name__ == "__main__":
    run_job(ingest, "jobs.ingest")
