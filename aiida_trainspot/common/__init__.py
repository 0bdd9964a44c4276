"""What every stage uses, below the stages (imports nothing above ``data``).

``settings`` (nested settings and unknown keys), ``runner`` (what the runners share) and
``seeds`` (every seed the package derives, and their range) import no AiiDA; ``throttle``
(bounded concurrency for work chains), ``runner_job`` (the base of the jobs that run the
package's runners, and of their parsers) and ``validators`` (shared port validators, the seed's
among them) are AiiDA's side. ``seeds`` imports numpy only, so ``data`` (its splits) uses it too.
"""
