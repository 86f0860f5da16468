"""spark-submit entry point of `skyclass cutouts --import PATH`: existing cutouts into lake/cutouts."""
import sys

from skyclass.cli import main as cli_main


def main(argv=None) -> int:
    """``import_cutouts.py --import PATH [--name NAME] [--conf FILE] [--set k=v ...]``."""
    return cli_main(["cutouts", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
