"""spark-submit entry point: export a night's predictions as a HATS catalog (for LSDB), a CSV or a FITS file.

    spark-submit jobs/export.py --conf conf/cluster.yaml [--format hats|csv|fits] [--run-date YYYY-MM-DD]
"""
import sys

from skyclass.cli import job_entry

main = job_entry("export")

if __name__ == "__main__":
    sys.exit(main())
