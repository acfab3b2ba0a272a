"""`--profile`: sample the node with py-spy while a scenario runs, and sum up where it went.

py-spy is not a dependency of the project: `.venv/bin/pip install py-spy` to use this.
It writes collapsed stacks ("frame;frame;... count"); `top()` turns them into the
functions that hold the CPU themselves (self) and those under which it is spent
(total), as shares of the samples taken while the node was running Python.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path

PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def command(pid: int, output: Path, rate: int = 250) -> list[str]:
    if PY_SPY is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return [
        PY_SPY,
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--nolineno",
        "--gil",  # only samples holding the GIL: CPU, not waiting
        "--nonblocking",
        "--output",
        str(output),
    ]


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m['func']} ({m['file']})"


def top(raw: Path, n: int = 25) -> dict[str, list[tuple[str, float]]]:
    """The n functions with the most self and total samples, as % of all samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        frames = [_name(f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        samples += k
        own[frames[-1]] += k
        for name in set(frames):
            total[name] += k
    if not samples:
        return {"self": [], "total": [], "samples": []}  # type: ignore[dict-item]
    return {
        "samples": samples,  # type: ignore[dict-item]
        "self": [(f, round(100 * c / samples, 1)) for f, c in own.most_common(n)],
        "total": [(f, round(100 * c / samples, 1)) for f, c in total.most_common(n)],
    }


def print_top(title: str, summary: dict[str, list[tuple[str, float]]]) -> None:
    print(f"\n== profile: {title} ({summary.get('samples', 0)} samples holding the GIL)")
    for kind in ("self", "total"):
        print(f"-- {kind} %")
        for name, share in summary.get(kind, []):
            print(f"{share:6.1f}  {name}")


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print_top(path, top(Path(path)))
