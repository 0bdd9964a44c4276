"""Executables that CalcJobs of aiida-trainspot run on the (possibly remote) computer.

Each module has a ``main(argv)`` installed as a console script. They read and write
files in the job folder only, take every path relative to it, and import no AiiDA
of their own, so a job runs unchanged wherever the package is installed.
"""
