"""The ``sweep`` and ``report`` sub-commands of ``apt-research``."""

from __future__ import annotations

from pathlib import Path


def cmd_sweep(args) -> int:
    from ..cli import UsageError
    from .report import build_report
    from .cluster import ClusterError, connect
    from .lock import SweepLocked
    from .runner import run_sweep
    from .spec import SpecError, load_spec

    try:
        sweep = load_spec(args.spec)
    except SpecError as error:
        raise UsageError(str(error)) from error
    out = Path(args.out) if args.out else Path("results") / sweep.name
    if args.dry_run:
        print(f"sweep {sweep.name}: {len(sweep.runs)} run(s) into {out}")
        for run in sweep.runs:
            changed = {k: v for k, v in run["params"].items() if k in ("dataset", "image_size", "num_scales", "bins",
                                                                     "method", "thresholds", "resize", "patch_size")}
            print(f"  {run['run_id']}  {changed}")
        return 0
    client = None
    if args.scheduler:
        if args.jobs != 1:
            raise UsageError(f"--jobs {args.jobs} runs local processes; with --scheduler the cluster's workers "
                             f"set the parallelism: drop --jobs")
        try:
            client = connect(args.scheduler)
        except ClusterError as error:
            raise UsageError(str(error)) from error
    try:
        statuses = run_sweep(sweep, out, jobs=args.jobs, resume=args.resume, device=args.device, client=client)
    except SweepLocked as error:
        raise UsageError(str(error)) from error
    finally:
        if client is not None:
            client.close()
    failed = [s for s in statuses if s["state"] != "finished"]
    report = build_report(out)
    print(f"sweep {sweep.name}: {len(statuses) - len(failed)} finished, {len(failed)} failed")
    print(f"report: {report.path}")
    return 1 if failed else 0


def cmd_report(args) -> int:
    from ..cli import UsageError
    from .report import build_report

    if not (Path(args.sweep_dir) / "runs").is_dir():
        raise UsageError(f"SWEEP_DIR must be a sweep directory with runs/, got {args.sweep_dir!r}")
    report = build_report(args.sweep_dir)
    print(f"report: {report.path}")
    return 0


def add_commands(commands) -> None:
    sweep = commands.add_parser("sweep", help="run a YAML ablation sweep through papermill, then report")
    sweep.add_argument("spec", help="a sweep spec, e.g. ablations/default.yaml")
    sweep.add_argument("--out", help="sweep directory (default results/<name>)")
    sweep.add_argument("--jobs", type=int, default=1, help="runs executed in parallel")
    sweep.add_argument("--resume", action="store_true",
                       help="skip runs that already finished, and shards of images already computed")
    sweep.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on the Dask cluster whose scheduler is ADDRESS (e.g. tcp://10.0.0.5:8786)")
    sweep.add_argument("--dry-run", action="store_true", help="validate and list the runs, run nothing")
    sweep.add_argument("--device", help="override every run's device (cpu, cuda, cuda:1)")
    sweep.set_defaults(func=cmd_sweep)

    report = commands.add_parser("report", help="aggregate a sweep directory into tables and figures")
    report.add_argument("sweep_dir")
    report.set_defaults(func=cmd_report)
