"""Per-site personalisation against the global model and each site's local-only model.

Runs the task's experiment twice on the same sites (same seed, so the same partition and held-out
splits): the global job as configured (the whole model federated; each site's figure is its
held-out accuracy of the exported global model, i.e. at the round the job exports), then the same
job with ``strategy.personalize: head`` (plus ``--finetune`` epochs of ``strategy.local_finetune``),
whose last round reports, per site and on that site's own held-out data, the personalised model's
accuracy and the local-only reference's (the same model trained on the site alone for the same
epochs). Done when the personalised worst site is at least the global worst site and every site's
personalised model is at least its local-only model.

    python -m benchmarks.personalize --task pneumonia
    python -m benchmarks.personalize --task pneumonia --finetune 1 --set strategy.rounds=4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._util import RESULTS, machine, read_rounds, table
from common import config as config_mod
from common.errors import ConfideError
from server.flower_runtime import setup_logging
from simulations.local import parse_sets, simulate

REPO = Path(__file__).resolve().parents[1]
TASKS = {"pneumonia": "simulations/configs/hospital_resnet_pneumonia.yaml"}


def _run(task: str, name: str, overrides: dict[str, Any]) -> tuple[Path, list[dict[str, Any]], float]:
    exp = config_mod.load(REPO / TASKS[task], {"output_dir": "runs/benchmarks", "name": name, **overrides})
    start = time.perf_counter()
    path = simulate(exp, cpus_per_site=1.0, threads_per_site=1)
    return path, read_rounds(path), time.perf_counter() - start


def exported_round(rounds: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    """The round whose global model the job exported: the best site-weighted held-out accuracy under
    best_held_out (as server/run.py chooses), else the last."""
    trained = [r for r in rounds[1:] if r["federated"].get("accuracy") is not None]
    if rule == "last" or not trained:
        return rounds[-1]
    return max(trained, key=lambda r: r["federated"]["accuracy"])


def per_site(rounds: list[dict[str, Any]], key: str, line: dict[str, Any] | None = None) -> dict[str, float]:
    line = line or rounds[-1]
    return {n: s["evaluate"][key] for n, s in line["sites"].items() if key in s.get("evaluate", {})}


def compare(
    global_acc: dict[str, float], personal: dict[str, float], local: dict[str, float], global_last: dict[str, float]
) -> dict[str, Any]:
    """Per site: local-only, global (exported round; and last round), personalised; the two checks."""
    sites = sorted(set(global_acc) & set(personal) & set(local))
    columns = {"local_only": local, "global": global_acc, "global_last": global_last, "personalised": personal}
    return {
        "sites": {s: {name: col[s] for name, col in columns.items()} for s in sites},
        "worst": {name: min(col[s] for s in sites) for name, col in columns.items()},
        "personalised_worst_ge_global_worst": min(personal[s] for s in sites) >= min(global_acc[s] for s in sites),
        "every_site_personalised_ge_local_only": all(personal[s] >= local[s] for s in sites),
    }


def render(result: dict[str, Any]) -> str:
    c = result["comparison"]
    order = ("local_only", "global", "global_last", "personalised")
    rows = [[s, *(v[k] for k in order)] for s, v in c["sites"].items()]
    rows.append(["worst site", *(c["worst"][k] for k in order)])
    headers = [
        "site (own held-out data)",
        "local-only",
        "global (exported round)",
        "global (last round)",
        "personalised",
    ]
    return table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="pneumonia", choices=list(TASKS))
    parser.add_argument("--finetune", type=int, default=0, help="strategy.local_finetune epochs (default 0)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for both jobs")
    parser.add_argument("--global-run", default="", help="reuse a finished global job's run folder")
    parser.add_argument("--personal-run", default="", help="reuse a finished personalised job's run folder")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        extra = parse_sets(args.set)
        out = RESULTS / f"personalize-{args.task}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {"machine": machine(), "task": args.task, "overrides": extra,
                                  "finetune": args.finetune}  # fmt: skip
        if args.global_run:
            g_path, g_rounds, g_secs = Path(args.global_run), read_rounds(Path(args.global_run)), 0.0
        else:
            g_path, g_rounds, g_secs = _run(args.task, f"pers-{args.task}-global", extra)
        rule = config_mod.load(g_path / "config.yaml").strategy.final_model
        chosen = exported_round(g_rounds, "last" if rule == "last" else "best_held_out")
        result["global"] = {"run": str(g_path), "seconds": round(g_secs), "exported_round": chosen["round"]}
        personal = {**extra, "strategy.personalize": "head", "strategy.local_finetune": args.finetune}
        if args.personal_run:
            p_path, p_rounds, p_secs = Path(args.personal_run), read_rounds(Path(args.personal_run)), 0.0
        else:
            p_path, p_rounds, p_secs = _run(args.task, f"pers-{args.task}-head-ft{args.finetune}", personal)
        result["personalised"] = {"run": str(p_path), "seconds": round(p_secs)}
        result["comparison"] = compare(
            per_site(g_rounds, "accuracy", chosen), per_site(p_rounds, "accuracy"),
            per_site(p_rounds, "local_only_accuracy"), per_site(g_rounds, "accuracy"),
        )  # fmt: skip
        out.write_text(json.dumps(result, indent=2))
        print(render(result), flush=True)
        c = result["comparison"]
        print(f"personalised worst >= global worst: {c['personalised_worst_ge_global_worst']}; "
              f"every site personalised >= local-only: {c['every_site_personalised_ge_local_only']}")  # fmt: skip
    except ConfideError as exc:
        print(f"confide: {exc}", file=sys.stderr)
        return 2
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
