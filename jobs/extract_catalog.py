"""spark-submit entry point: extract the labelled catalog (or --photometric objects) into the lake.

    spark-submit jobs/extract_catalog.py --conf conf/cluster.yaml [--set key=value ...]
"""
import sys

from skyclass.cli import job_entry
from skyclass.stage_summary import print_summary

main = job_entry("extract", on_result=print_summary)

if __name__ == "__main__":
    sys.exit(main())
