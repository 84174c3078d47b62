"""Batch QA as a Ray job — `beacon qa`, its report printed as JSON:

    ray job submit --working-dir . -- python -m jobs.answer QUESTIONS --output /shared/answers.jsonl \\
        --db /shared/beacon_db [--set KEY=VALUE ...]

Every flag of `beacon qa --help`; --set sets any AnswerConfig field (JSON values), e.g. --set top_k=2.
Give --db and --output as paths every node can reach.
"""

from beacon_cli.qa_cmd import qa
from jobs.entry import run_job

if __name__ == "__main__":
    run_job(qa, "jobs.answer")
