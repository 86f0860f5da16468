"""skyclass: Spark jobs that classify SDSS objects as GALAXY, STAR or QSO from photometry and image cutouts."""
from setuptools import find_packages, setup

setup(
    name="skyclass",
    version="0.1.0",
    description=__doc__,
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    package_data={"skyclass": ["sql/*.sql"]},
    python_requires=">=3.11,<3.12",
    # The exact pins live in requirements.txt (see README: the stack is pinned as a set). Horovod is built by
    # `make setup` after TensorFlow, without build isolation, so it is not listed here.
    install_requires=[
        "pyspark>=3.5,<3.6",
        "petastorm==0.13.1",
        "pyarrow>=10,<11",
        "pandas>=2.2,<2.3",
        "numpy>=1.26,<2",
        "requests",
        "pillow",
        "pyyaml",
        "matplotlib",
        "psutil",
    ],
    entry_points={"console_scripts": ["skyclass = skyclass.cli:main"]},
)
