"""The ``sweep`` and ``report`` sub-commands of ``apt-research``.

Every option is checked before any work starts: a bad one exits with code 2 and one line naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

MAX_RUNS = 1000
"""A spec expanding to more runs than this needs ``--yes``."""



def _jobs(text: str) -> int:
    from ..errors import UsageError

    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise UsageError(f"--jobs expects a whole number >= 1, got {text!r}")
    return jobs


def _device(text: str | None) -> str | None:
    from ..errors import UsageError
    from .parameters import ParameterError, validate_params

    if text is None:
        return None
    try:
        return validate_params({"device": text}, "--device")["device"]
    except ParameterError as error:
        raise UsageError(str(error).replace("--device: key 'device'", "--device")) from None


def _out(text: str | None, name: str) -> Path:
    """The sweep directory: new, empty, or a sweep directory apt-research made (``_io.check_claimable``)."""
    from .._io import OwnershipError, check_claimable
    from ..errors import UsageError

    out = Path(text) if text else Path("results") / name
    try:
        check_claimable(out, "sweep")
    except OwnershipError as error:
        raise UsageError(str(error)) from None
    return out


def dry_run_listing(sweep, out: Path) -> str:
    """The runs of a sweep, one line each with the parameters that vary between them."""
    from .parameters import PARAMETERS, varied_parameters

    keys = varied_parameters({key: [run["params"][key] for run in sweep.runs] for key in PARAMETERS})
    lines = [f"sweep {sweep.name}: {len(sweep.runs)} run(s) into {out}"
             + (f", varying {', '.join(keys)}" if keys else "")]
    lines += [f"  {run['run_id']}  " + json.dumps({k: run["params"][k] for k in keys}) for run in sweep.runs]
    return "\n".join(lines)


def cmd_sweep(args) -> int:
    from ..errors import UsageError
    from .cluster import ClusterError, connect, quiet_reconnects
    from .lock import SweepLocked
    from .report import build_report
    from .runner import run_sweep
    from .spec import SpecError, load_spec

    jobs, device = _jobs(args.jobs), _device(args.device)
    try:
        sweep = load_spec(args.spec, max_runs=None if args.yes else MAX_RUNS)
    except SpecError as error:
        raise UsageError(str(error)) from error
    out = _out(args.out, sweep.name)
    if args.dry_run:
        print(dry_run_listing(sweep, out))
        return 0
    client = None
    if args.scheduler:
        if jobs != 1:
            raise UsageError(f"--jobs {jobs} runs local processes; with --scheduler the cluster's workers "
                             f"set the parallelism: drop --jobs")
        try:
            client = connect(args.scheduler)
        except ClusterError as error:
            raise UsageError(str(error)) from error
    print(f"sweep {sweep.name}: {len(sweep.runs)} run(s) into {out}" + (f" on {args.scheduler}" if client else ""))
    with quiet_reconnects():  # a lost scheduler is reported by the runs, not by distributed's tracebacks
        try:
            statuses = run_sweep(sweep, out, jobs=jobs, resume=args.resume, device=device, client=client)
        except (SweepLocked, ClusterError) as error:
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
    from ..errors import UsageError
    from .report import build_report

    from .._io import OwnershipError, require_owned

    try:
        require_owned(args.sweep_dir, "sweep", "SWEEP_DIR")
    except OwnershipError as error:
        raise UsageError(str(error)) from None
    try:
        report = build_report(args.sweep_dir)
    except ValueError as error:  # a spec.yaml that is missing or not a sweep's
        raise UsageError(str(error)) from None
    print(f"report: {report.path}")
    return 0


def add_commands(commands) -> None:
    """Add ``sweep`` and ``report`` to the ``apt-research`` sub-command parser."""
    sweep = commands.add_parser("sweep", help="run a YAML ablation sweep through papermill, then report")
    sweep.add_argument("spec", help="a sweep spec, e.g. ablations/default.yaml")
    sweep.add_argument("--out", help="sweep directory (default results/<name>)")
    sweep.add_argument("--jobs", default="1", help="runs executed in parallel (>= 1)")
    sweep.add_argument("--resume", action="store_true",
                       help="skip runs that already finished, and shards of images already computed")
    sweep.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on the Dask cluster whose scheduler is ADDRESS (e.g. tcp://10.0.0.5:8786)")
    sweep.add_argument("--dry-run", action="store_true", help="validate and list the runs, run nothing")
    sweep.add_argument("--device", help="override every run's device (cpu, cuda, cuda:1)")
    sweep.add_argument("--yes", action="store_true", help=f"run a spec of more than {MAX_RUNS:,} runs")
    sweep.set_defaults(func=cmd_sweep)

    report = commands.add_parser("report", help="aggregate a sweep directory into tables and figures")
    report.add_argument("sweep_dir")
    report.set_defaults(func=cmd_report)
