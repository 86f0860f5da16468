"""spark-submit entry point: train the model with Horovod on Spark.

    spark-submit jobs/train.py --conf conf/cluster.yaml [--set key=value ...]
"""
import sys

from skyclass.cli import job_entry
from skyclass.stage_summary import print_summary

main = job_entry("train", on_result=print_summary)

if __name__ == "__main__":
    sys.exit(main())
