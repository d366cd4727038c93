"""Write the JSON card of a committed trained model (models/trained/*.json).

A card gathers what reproduces and judges a ``.shiftprog``: the training
command and summary of each stage (from the stage's ``result.json`` written by
:mod:`quant.train`), the export command and the full-test-set evaluation (the
``--json`` file of :mod:`quant.evaluate`; if it evaluated a copy at another path, the
copy must hold the same bytes, and the card names the program)::

    python -m quant.model_card models/trained/NAME.shiftprog \\
        --stage runs/a --stage runs/a_fold --evaluate runs/a_fold/evaluate.json \\
        --export "python -m quant.export runs/a_fold/best.pt -o models/trained/NAME.shiftprog" \\
        --evaluate-command "python -m quant.evaluate ..." --note "short CPU schedule"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: the fields of a stage's result.json that go on the card
STAGE_FIELDS = ("command", "model", "model_kwargs", "bits", "dataset", "data_source", "best_epoch",
                "test_top1", "test_loss", "images_per_s", "device", "best_val_acc", "test_top1_best_val")


def _load(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"model_card: cannot read {what} {path}: {e}")


def card(program: str, stages: list[Path], evaluate: Path, export: str, evaluate_command: str,
         note: str) -> dict:
    stage_summaries = []
    for run_dir in stages:
        result = _load(run_dir / "result.json", "training result")
        if not result.get("finished", False):
            raise SystemExit(f"model_card: {run_dir} did not finish training")
        stage_summaries.append({k: result[k] for k in STAGE_FIELDS if k in result})
    evaluation = _load(evaluate, "evaluation")
    evaluated = evaluation.get("program")
    if evaluated and evaluated != program:
        # evaluated as a staged copy (e.g. before it was committed): only the same bytes count
        try:
            same = Path(evaluated).read_bytes() == Path(program).read_bytes()
        except OSError as e:
            raise SystemExit(f"model_card: cannot compare the evaluated program with {program}: {e}")
        if not same:
            raise SystemExit(f"model_card: {evaluate} evaluated {evaluated}, which differs from {program}")
        evaluation["program"] = program
    return {
        "program": program,
        "stages": stage_summaries,
        "export": export,
        "evaluate_command": evaluate_command,
        "evaluate": evaluation,
        "note": note,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quant.model_card", description=__doc__.split("\n\n")[0])
    ap.add_argument("program", help="the committed .shiftprog the card describes")
    ap.add_argument("--stage", action="append", type=Path, required=True,
                    help="a training run directory (its result.json), in training order; repeat")
    ap.add_argument("--evaluate", type=Path, required=True, help="the quant.evaluate --json file")
    ap.add_argument("--export", required=True, help="the export command line")
    ap.add_argument("--evaluate-command", required=True, help="the evaluate command line")
    ap.add_argument("--note", default="", help="a remark (e.g. the schedule's limits)")
    ap.add_argument("-o", "--output", type=Path, help="card file (default: the program with .json)")
    args = ap.parse_args(argv)
    out = args.output or Path(args.program).with_suffix(".json")
    data = card(args.program, args.stage, args.evaluate, args.export, args.evaluate_command, args.note)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
