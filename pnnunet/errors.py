"""User-facing errors.

Anything a user can cause (bad input files, missing folders, wrong flags) is raised as a
:class:`PnnunetError`; the CLI prints its message and exits with code 1, never a traceback.
"""

from __future__ import annotations

from pathlib import Path


class PnnunetError(Exception):
    """An error the user can fix. ``str(err)`` is the complete message shown by the CLI."""


class DatasetError(PnnunetError):
    """A problem with one input file or folder.

    Parameters
    ----------
    path : the offending file or folder (named first in the message).
    problem : what is wrong, in one sentence.
    fix : what the user should do about it.
    """

    def __init__(self, path: Path | str, problem: str, fix: str):
        self.path, self.problem, self.fix = Path(path), problem, fix
        super().__init__(f"{path}: {problem}\n  fix: {fix}")

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.path, self.problem, self.fix))


class DatasetProblems(PnnunetError):
    """Several problems found by one check (e.g. the integrity check), reported together."""

    def __init__(self, problems: list[DatasetError], what: str = "dataset check"):
        self.problems = problems
        lines = [f"{what} found {len(problems)} problem(s):"]
        shown = problems[:50]
        lines += [f"- {p}" for p in shown]
        if len(problems) > len(shown):
            lines.append(f"... and {len(problems) - len(shown)} more")
        super().__init__("\n".join(lines))

    def __reduce__(self):
        return (type(self), (self.problems,))
