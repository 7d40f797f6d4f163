"""A stand-in for ``python -m pnnunet.app.worker JOB_DIR`` in the server tests: no model, no Paddle.

It follows the worker's contract (``progress.json`` while running, ``result.json`` at the end) and
behaves by the uploaded file's name: ``slow*`` runs ~3 s, ``hang*`` runs until killed, anything else
finishes at once. A real worker is used by tests/app/test_browser.py and test_worker.py.
"""

import json
import os
import sys
import time
from pathlib import Path


def write(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def main(folder: Path) -> int:
    job = json.loads((folder / "job.json").read_text())
    name = job["input"]["name"]
    (folder / "worker_pid").write_text(str(os.getpid()))
    seconds = 3.0 if name.startswith("slow") else 120.0 if name.startswith("hang") else 0.0
    start = time.time()
    tiles = 10
    while True:
        done = min(tiles, int(tiles * (time.time() - start) / seconds)) if seconds else tiles
        write(folder / "progress.json", {"stage": "predicting", "tile": done, "tiles": tiles, "fold": 1, "folds": 1})
        if done >= tiles:
            break
        time.sleep(0.05)
    (folder / "output").mkdir(exist_ok=True)
    (folder / "output" / f"{name}.nii.gz").write_bytes(b"not really a label map")
    write(folder / "result.json", {"state": "done", "message": "ok", "files": {"segmentation": f"output/{name}.nii.gz"},
                                   "labels": {"1": "a"}, "seconds": time.time() - start})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
