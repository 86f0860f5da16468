"""spark-submit entry point: join catalog and cutouts into the training table.

    spark-submit jobs/build_training_table.py --conf conf/cluster.yaml [--set key=value ...]
"""
import sys

from skyclass.cli import job_entry
from skyclass.stage_summary import print_summary

main = job_entry("table", on_result=print_summary)

if __name__ == "__main__":
    sys.exit(main())
