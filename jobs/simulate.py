"""spark-submit entry point: write a synthetic catalog and cutouts lake for load tests.

    spark-submit jobs/simulate.py --conf conf/cluster.yaml [--set key=value ...]
"""
import sys

from skyclass.cli import job_entry

main = job_entry("simulate")

if __name__ == "__main__":
    sys.exit(main())
