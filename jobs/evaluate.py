"""spark-submit entry point: evaluate a model package against the classical baselines.

    spark-submit jobs/evaluate.py --conf conf/cluster.yaml [--set key=value ...]
"""
import sys

from skyclass.cli import job_entry
from skyclass.stage_summary import print_summary

main = job_entry("evaluate", on_result=print_summary)

if __name__ == "__main__":
    sys.exit(main())
