"""spark-submit entry point: download image cutouts for lake objects that lack one.

    spark-submit jobs/download_cutouts.py --conf conf/cluster.yaml [--set key=value ...]
"""
import sys

from skyclass.cli import job_entry
from skyclass.stage_summary import print_summary

main = job_entry("cutouts", on_result=print_summary)

if __name__ == "__main__":
    sys.exit(main())
