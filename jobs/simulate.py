"""spark-submit entry point: write a synthetic catalog and cutouts lake for load tests.

    spark-submit jobs/simulate.py --conf conf/cluster.yaml [--set key=value ...]
"""
import sys

from skyclass.cli import job_entry
from skyclass.stage_summary import print_summary

main = job_entry("simulate", on_result=print_summary)

if __name__ == "__main__":
    sys.exit(main())
