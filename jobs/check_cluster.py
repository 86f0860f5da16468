"""spark-submit entry point: show which executor ran each of a few tasks, and what its Python imported.

    spark-submit jobs/check_cluster.py --conf conf/cluster.yaml [--wait-executors 2] [--json]
"""
import sys

from skyclass.cli import job_entry

main = job_entry("check-cluster")

if __name__ == "__main__":
    sys.exit(main())
