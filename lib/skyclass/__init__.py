"""skyclass: Spark jobs that classify SDSS objects as GALAXY, STAR or QSO from photometry and image cutouts."""

__version__ = "0.1.0"
