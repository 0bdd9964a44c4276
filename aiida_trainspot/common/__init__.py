"""What every stage uses, below the stages (imports nothing above ``data``).

``settings`` (nested settings and unknown keys) and ``runner`` (what the runners share) import
no AiiDA; ``throttle`` (bounded concurrency for work chains), ``runner_job`` (the base of the jobs
that run the package's runners, and of their parsers) and ``validators`` (shared port
validators) are AiiDA's side.
"""
