"""A run directory that keeps each finished piece of work as it goes, and that a run with the same parameters resumes.

    run = ResumableRun(output_dir, "eval_run.json", "eval_records.jsonl")
    if resume:
        run.check_resumable(identity)      # one InputError line when the parameters differ or there is no run
    run.start(identity, resume)            # fresh: run file + empty records; resume: a torn last line cut off
    run.append([record.to_dict()])         # one synced line per finished piece
    done = run.read()                      # the finished pieces, as dicts

The run file holds the run's identity (its parameters and the bytes of its inputs); records are JSON lines appended
whole and synced (`src.utils.jsonl`), so a run killed at any point keeps every finished piece.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

from src.utils import jsonl
from src.utils.errors import InputError
from src.utils.io import atomic_write_json, atomic_write_text, sha256_file


def first_difference(here, there, path: str = "") -> tuple[str, str, str] | None:
    """(where, value here, value there) of the first difference between two JSON values, descending into objects
    (so that a changed file among many is named), values cut to 60 characters; None when equal."""
    if isinstance(here, dict) and isinstance(there, dict):
        for key in sorted(set(here) | set(there), key=str):
            found = first_difference(here.get(key), there.get(key), f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    if here == there:
        return None
    shown = [("absent" if v is None else str(v))[:60] for v in (here, there)]
    return path, shown[0], shown[1]


def input_digests(kg_file: str | Path, model_dir: str | Path) -> dict:
    """sha256 of the KG file and of every file in the model directory: a resumed run reads the same inputs."""
    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file())
    return {"kg_sha256": sha256_file(kg_file), "model_sha256": {p.name: sha256_file(p) for p in files}}


class ResumableRun:
    def __init__(self, output_dir: str | Path, run_file: str, records_file: str) -> None:
        self.output_dir = Path(output_dir)
        self.run_path, self.records_path = self.output_dir / run_file, self.output_dir / records_file

    def check_resumable(self, identity: dict) -> None:
        """There is a run here and its identity is `identity`; else one InputError line (the first difference)."""
        if not self.run_path.is_file():
            raise InputError(f"nothing to resume in {self.output_dir}: it has no {self.run_path.name} (start the run "
                             "without --resume)")
        saved = json.loads(self.run_path.read_text(encoding="utf-8"))
        difference = first_difference(json.loads(json.dumps(identity)), saved)  # the JSON form, as saved
        if difference is not None:
            key, here, there = difference
            raise InputError(f"--resume: {key} is {here} here but {there} in the run in {self.output_dir}; resume "
                             "with that run's parameters, or start a new run without --resume")

    def start(self, identity: dict, resume: bool, stale: Sequence[str] = ()) -> None:
        """A fresh run: the run file written, an empty records file, the `stale` files of an earlier run removed.
        resume: a torn last record cut off."""
        if resume:
            jsonl.cut_torn_tail(self.records_path)
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run_path, identity)
        atomic_write_text(self.records_path, "")
        for name in stale:
            (self.output_dir / name).unlink(missing_ok=True)

    def append(self, items: Iterable[dict]) -> None:
        jsonl.append(self.records_path, items)

    def read(self) -> list[dict]:
        """The finished records, in the order they were appended; a line that is not JSON is one InputError line."""
        if not self.records_path.is_file():
            return []
        records = []
        for number, line in enumerate(self.records_path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise InputError(f"{self.records_path}:{number}: not a record of this run (start the run without "
                                 "--resume)") from None
        return records

    def count(self) -> int:
        return len(self.read())

    def finish(self) -> None:
        """Remove the run file and records once the run's results are written, for runs whose records are not among
        their results (then a finished run is not resumed)."""
        self.run_path.unlink(missing_ok=True)
        self.records_path.unlink(missing_ok=True)
