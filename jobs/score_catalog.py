"""spark-submit entry point: label a lake catalog with a model package.

    spark-submit jobs/score_catalog.py --conf conf/cluster.yaml [--set key=value ...]
"""
import sys

from skyclass.cli import job_entry
from skyclass.stage_summary import print_summary

main = job_entry("score", on_result=print_summary)

if __name__ == "__main__":
    sys.exit(main())
