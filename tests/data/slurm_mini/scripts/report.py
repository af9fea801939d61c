"""Collect the heavy job's results (light, local step); record this process's SLURM id."""
import json
import os
import sys

relaxed, env, ranks, out = sys.argv[1:5]
report = json.load(open(relaxed))
report["relax_env"] = dict(line.split("=", 1) for line in open(env).read().split())
report["relax_ranks"] = open(ranks).read().splitlines()
report["report_slurm_job_id"] = os.environ.get("SLURM_JOB_ID", "")
with open(out, "w") as fh:
    json.dump(report, fh, indent=1)
