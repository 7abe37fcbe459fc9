"""``python -m crosscheck``: every model class in both frameworks from one seeded weight set.

Prints a table (class, outputs compared, max abs diff, tolerance, round trips, status) and
exits non-zero if any row fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from d2v_common.io_utils import non_negative_int  # noqa: E402


def _format_table(rows, reference: bool, runtimes=()) -> str:
    head = ["case", "class", "outputs", "max abs diff", "tol", "PT>TF>PT", "PT>h5>PT"]
    if reference:
        head.append("vs HF torch")
    head += list(runtimes)
    head += ["status", "s"]
    lines = []
    for r in rows:
        rt = r.round_trip
        cells = [
            r.case,
            r.architecture,
            ",".join(r.outputs) if not r.error else "-",
            f"{r.max_diff:.2e}" if not r.error else "-",
            f"{r.tolerance:.0e}",
            {True: "bit-exact", False: "DIFFERS", None: "-"}[rt.get("pt>tf>pt")],
            {True: "bit-exact", False: "DIFFERS", None: "-"}[rt.get("pt>h5>pt")],
        ]
        if reference:
            cells.append(f"{r.reference_diff:.2e}" if r.reference_diff is not None else "-")
        cells += [r.runtimes[name].cell() if name in r.runtimes else "-" for name in runtimes]
        cells += ["ok" if r.ok else "FAIL", f"{r.seconds:.1f}"]
        lines.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*["-" * w for w in widths])]
    out += [fmt.format(*cells) for cells in lines]
    for r in rows:
        if r.error:
            out.append(f"{r.case}: {r.error}")
        for name, result in r.runtimes.items():
            if result.error:
                out.append(f"{r.case} [{name}]: {result.error}")
    return "\n".join(out)


def _use_keras_backend(name: str) -> bool:
    """Select the Keras backend for this process; False if Keras already runs another one."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend() == name
    os.environ["KERAS_BACKEND"] = name
    return True


def select_cases(cases, wanted: list[str]):
    """The cases each of ``wanted`` names: a case or class name (``TF`` prefix allowed), exactly,
    else as a substring. Raises ``ValueError`` listing what exists when one matches nothing."""
    chosen = []
    for query in wanted:
        key = query[2:] if query.startswith("TF") else query
        exact = [c for c in cases if key in (c.name, c.architecture)]
        found = exact or [c for c in cases if key in c.name or key in c.architecture]
        if not found:
            known = ", ".join(sorted({c.name for c in cases} | {c.architecture for c in cases}))
            raise ValueError(f"no case matches {query!r}; cases and classes: {known} (see --list)")
        chosen += [c for c in found if c not in chosen]
    return [c for c in cases if c in chosen]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crosscheck", description=__doc__)
    parser.add_argument("--size", choices=["small", "base"], default="small", help="model size (default: small)")
    parser.add_argument("--family", action="append", choices=["text", "audio", "vision", "data2vec2"], help="limit to a family")
    parser.add_argument("--case", action="append",
                        help="run only these cases: a case name or class name (see --list), or part of one")
    parser.add_argument("--list", action="store_true", help="list the cases (name and class) and exit")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="weight and input seed (default 0)")
    parser.add_argument("--reference", choices=["hf"], help="also compare d2v torch with transformers' PyTorch classes")
    parser.add_argument("--no-round-trips", action="store_true", help="skip the save/load round trips")
    parser.add_argument("--runtimes", metavar="NAMES",
                        help="comma-separated export formats (onnx, torch-export, ...): export every case "
                        "and add a column with the artifact's max abs diff against the eager model in its runtime")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--keras-backend", choices=["tensorflow", "jax", "torch"],
        help="Keras backend of the Keras side (default: KERAS_BACKEND, else tensorflow)",
    )
    args = parser.parse_args(argv)
    if args.keras_backend and not _use_keras_backend(args.keras_backend):
        # Keras fixed its backend when it was first imported: run in a fresh process.
        cmd = [sys.executable, "-m", "crosscheck", *(sys.argv[1:] if argv is None else argv)]
        env = {**os.environ, "KERAS_BACKEND": args.keras_backend}
        return subprocess.run(cmd, env=env).returncode

    from crosscheck.cases import all_cases
    from crosscheck.runner import check_case
    from crosscheck.runtimes import parse_runtimes

    try:
        runtimes = parse_runtimes(args.runtimes)
    except ValueError as e:
        parser.error(str(e))

    cases = all_cases(args.size, args.family)
    if args.list:
        width = max(len(c.name) for c in cases)
        print("\n".join(f"{c.name:<{width}}  {c.architecture}" for c in cases))
        return 0
    if args.case:
        try:
            cases = select_cases(cases, args.case)
        except ValueError as e:
            print(f"python -m crosscheck: error: {e}", file=sys.stderr)
            return 2
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in cases:
            row = check_case(case, args.seed, args.reference, with_round_trips=not args.no_round_trips,
                             runtimes=tuple(runtimes))
            rows.append(row)
            if not args.json:
                print(f"  {case.name}: {'ok' if row.ok else 'FAIL'} ({row.seconds:.1f}s)", file=sys.stderr, flush=True)
    failed = [r for r in rows if not r.ok]
    if args.json:
        import keras

        report = {"keras_backend": keras.backend.backend(), "rows": [r.to_dict() for r in rows], "failed": len(failed)}
        print(json.dumps(report, indent=2))
    else:
        import keras

        print(f"Keras backend: {keras.backend.backend()}")
        print(_format_table(rows, args.reference is not None, runtimes))
        print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
