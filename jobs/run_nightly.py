"""spark-submit entry point: the nightly chain: extract, cutouts, table, train if needed, score, evaluate.

    spark-submit jobs/run_nightly.py --conf conf/cluster.yaml [--set key=value ...]
"""
import sys

from skyclass.cli import job_entry
from skyclass.stage_summary import print_summary

main = job_entry("run", on_result=print_summary)

if __name__ == "__main__":
    sys.exit(main())
