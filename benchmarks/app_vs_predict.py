"""pnnunet_app segmenting a bundled case vs pnnunet_predict on the same case, and the page's load time.

For each round, on the same model and case:
- ``pnnunet_predict -i DIR -o OUT -m MODEL -f 0`` as a user runs it (a new process: wall time from start
  to exit, Paddle import and network export included);
- the app: create job -> upload -> start -> done, timed by the client (HTTP), and the worker's own
  ``seconds`` (from worker start) and ``predict_seconds`` (``predict_folder`` only);
- the page in headless Chromium (Debian's chromium + chromedriver): navigation to ready (models and jobs
  listed, NiiVue loaded), and from "view" to the viewer having loaded both volumes.

    python benchmarks/app_vs_predict.py --models RESULTS_ROOT --model Dataset004_.../pnnunetTrainer__...__3d_fullres \
        --case tests/data/Task04_Hippocampus_sample/imagesTs/hippocampus_045.nii.gz --rounds 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _call(base: str, method: str, path: str, data: bytes | None = None, ctype="application/json") -> dict:
    req = urllib.request.Request(base + path, data=data, method=method, headers={"content-type": ctype})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def time_predict(models: Path, model: str, case: Path, work: Path, tta: bool) -> float:
    inputs, out = work / "in", work / f"out_{time.monotonic_ns()}"
    inputs.mkdir(exist_ok=True)
    shutil.copyfile(case, inputs / case.name)
    cmd = ["pnnunet_predict", "-i", str(inputs), "-o", str(out), "-m", str(models / model), "-f", "0", "--no_pbar",
           "-npp", "0", "-nps", "0"] + ([] if tta else ["--disable_tta"])
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def time_app_job(base: str, model: str, case: Path, tta: bool) -> dict:
    start = time.perf_counter()
    job = _call(base, "POST", "/api/jobs", json.dumps({"model": model, "folds": [0], "tta": tta}).encode())["id"]
    _call(base, "PUT", f"/api/jobs/{job}/upload/{case.name}", case.read_bytes(), "application/octet-stream")
    _call(base, "POST", f"/api/jobs/{job}/start")
    while True:
        s = _call(base, "GET", f"/api/jobs/{job}")
        if s["state"] in ("done", "failed", "cancelled"):
            break
        time.sleep(0.05)
    if s["state"] != "done":
        raise SystemExit(f"app job {s['state']}: {s['message']}")
    return {"client": time.perf_counter() - start, "worker": s["result"]["seconds"],
            "predict_folder": s["result"]["predict_seconds"], "id": job}


def time_page(base: str, profile: Path) -> dict:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--window-size=1280,1400",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    try:
        start = time.perf_counter()
        driver.get(base)
        while driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") != "1":
            time.sleep(0.01)
        ready = time.perf_counter() - start
        load_event = driver.execute_script(
            "const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd - t.startTime;") / 1000
        start = time.perf_counter()
        driver.find_element(By.CSS_SELECTOR, "button.view").click()
        while not driver.find_element(By.ID, "gl").get_attribute("data-loaded"):
            time.sleep(0.01)
        viewer = time.perf_counter() - start
    finally:
        driver.quit()
    return {"page_ready": ready, "load_event": load_event, "viewer": viewer}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--model", required=True, help="<dataset>/<model folder> as the app lists it")
    p.add_argument("--case", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--disable_tta", action="store_true")
    args = p.parse_args()
    tta = not args.disable_tta
    work = Path(tempfile.mkdtemp(prefix="pnnunet_app_bench_"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    server = subprocess.Popen(["pnnunet_app", "--models", str(args.models), "--jobs", str(work / "jobs"), "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                _call(base, "GET", "/api/info")
                break
            except OSError:
                time.sleep(0.05)
        server_start = time.perf_counter() - t0
        rows = []
        for r in range(args.rounds):  # alternate, so that machine load hits both alike
            predict = time_predict(args.models, args.model, args.case, work, tta)
            app = time_app_job(base, args.model, args.case, tta)
            page = time_page(base, work / f"profile_{r}")
            rows.append({"predict": predict, **app, **page})
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
    finally:
        server.terminate()
        server.wait(20)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "id"}
    print(f"\nserver start (process to first answer): {server_start:.2f} s; TTA {'on' if tta else 'off'}; "
          f"{args.rounds} rounds, medians:")
    print("| what | median |\n|---|---|")
    for k, label in (("predict", "pnnunet_predict (new process, wall)"),
                     ("client", "pnnunet_app job: create + upload + start + done (client)"),
                     ("worker", "pnnunet_app worker process (start to result.json)"),
                     ("predict_folder", "pnnunet_app: predict_folder inside the worker"),
                     ("page_ready", "page: navigation to ready (models, jobs, NiiVue loaded)"),
                     ("load_event", "page: browser load event"),
                     ("viewer", "viewer: 'view' click to both volumes loaded")):
        print(f"| {label} | {med[k]:.2f} s |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
