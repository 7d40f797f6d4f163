// pnnunet_app page: upload -> model -> job (progress, cancel) -> viewer (NiiVue) -> statistics -> downloads.
import { Niivue, SLICE_TYPE, SHOW_RENDER } from "/static/niivue/niivue.js";

const $ = (id) => document.getElementById(id);
const state = { models: [], files: [], sample: null, viewing: null, labels: {}, colors: {}, hidden: new Set(),
  nv: null };
// label value -> [r, g, b]: the colours of the report and the DICOM-SEG (sent by the worker), grey otherwise
const colorOf = (v) => state.colors[v] || [128, 128, 128];

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `the server answered ${response.status} ${response.statusText}`);
  }
  return body;
}

function uploadFile(jobId, relPath, file, onProgress) {
  // XMLHttpRequest for upload progress; the body is the file itself, streamed to disk by the server
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", `/api/jobs/${jobId}/upload/${relPath.split("/").map(encodeURIComponent).join("/")}`);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new Error((body && body.error) || `upload failed (${xhr.status})`));
    };
    xhr.onerror = () => reject(new Error("the upload was interrupted (is the server still running?)"));
    xhr.send(file);
  });
}

// ---- step 1 and 2: input and model -------------------------------------------------------
function chosen(files, sample) {
  state.files = files;
  state.sample = sample;
  const what = sample ? `sample ${sample}` : files.length === 1 ? files[0].name
    : files.length ? `${files.length} files (DICOM folder)` : "nothing chosen yet";
  $("chosen").textContent = what;
  updateStart();
}

function updateStart() {
  $("start").disabled = !(state.models.length && (state.files.length || state.sample));
}

function describeModel() {
  const m = state.models[$("model").selectedIndex];
  if (!m) return;
  const names = Object.entries(m.labels).filter(([n]) => n !== "background" && n !== "ignore")
    .map(([n, v]) => `${v}: ${n}`).join(", ");
  $("model-details").textContent = `${m.dataset} · configuration ${m.configuration}` +
    (m.plans ? ` · plans ${m.plans}` : "") + ` · labels ${names}`;
  $("folds").innerHTML = "folds: " + m.folds.map((f) =>
    `<label><input type="checkbox" class="fold" value="${f}" checked> ${f}</label>`).join(" ");
}

async function loadModels() {
  state.models = await api("/api/models");
  const select = $("model");
  select.innerHTML = "";
  for (const m of state.models) {
    const opt = document.createElement("option");
    opt.value = m.key;
    opt.textContent = `${m.dataset} — ${m.model === "best" ? m.configuration : m.configuration + " (" + m.trainer + ", " + m.plans + ")"}`;
    select.appendChild(opt);
  }
  if (!state.models.length) {
    $("model-details").textContent = "no trained model found under the models folder (start pnnunet_app --models DIR, or --demo)";
  }
  describeModel();
  updateStart();
}

async function start() {
  showError("");
  const m = state.models[$("model").selectedIndex];
  const folds = [...document.querySelectorAll(".fold:checked")].map((b) => (b.value === "all" ? "all" : Number(b.value)));
  if (!folds.length) { showError("choose at least one fold"); return; }
  $("start").disabled = true;
  try {
    const { id } = await api("/api/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: m.key, folds, tta: $("tta").checked }) });
    if (state.sample) {
      await api(`/api/jobs/${id}/sample/${encodeURIComponent(state.sample)}`, { method: "POST" });
    } else {
      const total = state.files.reduce((s, f) => s + f.size, 0);
      let done = 0;
      const queue = [...state.files];
      const worker = async () => {
        while (queue.length) {
          const f = queue.shift();
          let last = 0;
          await uploadFile(id, f.webkitRelativePath || f.name, f, (loaded) => {
            done += loaded - last; last = loaded;
            $("upload-status").textContent = `uploading ${(100 * done / Math.max(1, total)).toFixed(0)} %`;
          });
          done += f.size - last;
        }
      };
      await Promise.all([worker(), worker(), worker()].slice(0, Math.min(3, state.files.length)));
    }
    $("upload-status").textContent = "checking the upload ...";
    await api(`/api/jobs/${id}/start`, { method: "POST" });
    $("upload-status").textContent = "queued";
    state.follow = id;
    await refreshJobs();
  } catch (e) {
    showError(e.message);
    $("upload-status").textContent = "";
    await refreshJobs();
  } finally {
    updateStart();
  }
}

// ---- step 3: jobs ---------------------------------------------------------------------------
function describeState(j) {
  const p = j.progress || {};
  if (j.state === "queued") return `waiting (${j.queue_position}. in the queue)${j.message && j.message !== "waiting" ? ": " + j.message : ""}`;
  if (j.state === "running") {
    if (j.message === "cancelling") return "cancelling ...";
    let text = `running: ${p.stage || "starting"}`;
    if (p.cases > 1 && p.cases_done !== undefined) text += `, case ${Math.min(p.cases_done + 1, p.cases)}/${p.cases}`;
    if (p.folds > 1) text += `, fold ${p.fold}/${p.folds}`;
    if (p.tiles) text += `, tile ${p.tile}/${p.tiles}`;
    return text;
  }
  if (j.state === "done") return `done in ${(j.result.seconds || 0).toFixed(1)} s`;
  if (j.state === "failed") return `failed: ${j.message}`;
  return j.state + (j.message ? `: ${j.message}` : "");
}

async function refreshJobs() {
  let jobs;
  try { jobs = await api("/api/jobs"); } catch (e) { return; }
  const body = $("jobs").tBodies[0];
  body.innerHTML = "";
  for (const j of jobs.slice().reverse()) {
    const tr = body.insertRow();
    tr.dataset.id = j.id;
    tr.className = `job ${j.state}`;
    tr.insertCell().textContent = j.input || "(upload)";
    tr.insertCell().textContent = j.model || "";
    const cell = tr.insertCell();
    cell.className = "job-state";
    cell.textContent = describeState(j);
    const p = j.progress || {};
    if (j.state === "running" && p.tiles) {
      const bar = document.createElement("progress");
      bar.max = p.tiles; bar.value = p.tile;
      cell.appendChild(bar);
    }
    const actions = tr.insertCell();
    if (j.state === "done") {
      const b = document.createElement("button");
      b.textContent = "view"; b.className = "view";
      b.onclick = () => openJob(j);
      actions.appendChild(b);
    }
    if (j.state === "queued" || j.state === "running") {
      const b = document.createElement("button");
      b.textContent = "cancel"; b.className = "cancel";
      b.onclick = async () => { await api(`/api/jobs/${j.id}/cancel`, { method: "POST" }); refreshJobs(); };
      actions.appendChild(b);
    }
    if (state.follow === j.id && j.state === "done") { state.follow = null; $("upload-status").textContent = ""; openJob(j); }
    if (state.follow === j.id && (j.state === "failed" || j.state === "cancelled")) {
      state.follow = null;
      if (j.state === "failed") showError(j.message);
      $("upload-status").textContent = "";
    }
  }
}

// ---- step 4: viewer -------------------------------------------------------------------------
function labelLut() {
  const values = Object.keys(state.labels).map(Number);
  const max = Math.max(0, ...values);
  const lut = { R: [], G: [], B: [], A: [], I: [], labels: [] };
  for (let v = 0; v <= max; v++) {
    const c = colorOf(v);
    const visible = v > 0 && state.labels[v] !== undefined && !state.hidden.has(v);
    lut.R.push(c[0]); lut.G.push(c[1]); lut.B.push(c[2]); lut.A.push(visible ? 255 : 0); lut.I.push(v);
    lut.labels.push(v === 0 ? "background" : state.labels[v] || `label ${v}`);
  }
  return lut;
}

function applyLabels() {
  const nv = state.nv;
  if (!nv || nv.volumes.length < 2) return;
  nv.volumes[1].setColormapLabel(labelLut());
  nv.updateGLVolume();
}

function applyLayout() {
  const nv = state.nv;
  if (!nv) return;
  const v = $("layout").value;
  nv.opts.multiplanarShowRender = v === "mpr3d" ? SHOW_RENDER.ALWAYS : SHOW_RENDER.NEVER;
  const type = { mpr3d: SLICE_TYPE.MULTIPLANAR, mpr: SLICE_TYPE.MULTIPLANAR, axial: SLICE_TYPE.AXIAL,
    coronal: SLICE_TYPE.CORONAL, sagittal: SLICE_TYPE.SAGITTAL, render: SLICE_TYPE.RENDER }[v];
  nv.setSliceType(type);
}

function labelList() {
  const box = $("labels");
  box.innerHTML = "";
  for (const [v, name] of Object.entries(state.labels)) {
    const c = colorOf(v);
    const label = document.createElement("label");
    label.className = "label-toggle";
    label.innerHTML = `<input type="checkbox" data-label="${v}" checked> <span class="swatch" style="background:rgb(${c})"></span> `;
    label.appendChild(document.createTextNode(`${v}: ${name}`));
    label.querySelector("input").onchange = (e) => {
      if (e.target.checked) state.hidden.delete(Number(v)); else state.hidden.add(Number(v));
      applyLabels();
    };
    box.appendChild(label);
  }
}

function hoverName(event) {
  const nv = state.nv;
  if (!nv || nv.volumes.length < 2) return;
  const rect = nv.canvas.getBoundingClientRect();
  const dpr = nv.uiData.dpr || window.devicePixelRatio || 1;
  const frac = nv.canvasPos2frac([(event.clientX - rect.left) * dpr, (event.clientY - rect.top) * dpr]);
  if (!frac || frac[0] < 0) { $("hover").textContent = "point at a slice to name a label"; return; }
  // RAS voxel of the label map (NiiVue 0.69's frac2vox reads an undefined "dims"; getValue takes RAS voxels)
  const seg = nv.volumes[1];
  const vox = [0, 1, 2].map((i) => Math.round(frac[i] * seg.dimsRAS[i + 1] - 0.5));
  const value = Math.round(seg.getValue(vox[0], vox[1], vox[2]));
  $("hover").textContent = value > 0 ? `${state.labels[value] || "label " + value} (label ${value})` : "background";
}

async function openJob(job) {
  state.viewing = job.id;
  state.labels = job.result.labels || {};
  state.colors = job.result.colors || {};
  state.hidden = new Set();
  $("step-viewer").hidden = false;
  $("step-stats").hidden = false;
  $("viewer-title").textContent = `${job.input} · ${job.model}`;
  $("viewer-status").textContent = "loading the volumes ...";
  if (!state.nv) {
    state.nv = new Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: true, dragAndDropEnabled: false,
      multiplanarShowRender: SHOW_RENDER.ALWAYS });
    await state.nv.attachToCanvas($("gl"));
    $("gl").addEventListener("mousemove", hoverName);
  }
  const nv = state.nv;
  await nv.loadVolumes([
    { url: `/api/jobs/${job.id}/view/image.nii.gz`, name: "image.nii.gz", colormap: "gray" },
    { url: `/api/jobs/${job.id}/view/seg.nii.gz`, name: "seg.nii.gz", opacity: Number($("opacity").value) },
  ]);
  applyLabels();
  applyLayout();
  labelList();
  $("viewer-status").textContent = "drag to move the crosshair; scroll to change the slice; in 3D, drag to rotate";
  $("gl").dataset.loaded = job.id;
  await showStats(job);
}

// ---- step 5: statistics and downloads ----------------------------------------------------
const fmt = (x, d = 2) => (x === null || x === undefined ? "–" : typeof x === "number" ? x.toFixed(d) : String(x));

async function showStats(job) {
  const files = job.result.files || {};
  const body = $("stats").tBodies[0];
  body.innerHTML = "";
  if (files.statistics_json) {
    const stats = await api(`/api/jobs/${job.id}/download/statistics_json`);
    for (const [name, e] of Object.entries(stats.labels)) {
      const tr = body.insertRow();
      tr.className = "stat-row";
      const i = e.intensity || {};
      for (const cell of [name, e.voxels, fmt(e.volume_ml, 3), fmt(i.mean), fmt(i.std), fmt(i.median), fmt(i.min),
        fmt(i.max), e.components, fmt(e.largest_component_share), e.touches_border ? "yes" : "no"]) {
        tr.insertCell().textContent = cell;
      }
    }
  }
  const names = { segmentation: "label map", statistics_csv: "statistics (CSV)", statistics_json: "statistics (JSON)",
    report_html: "report (HTML)", report_png: "report (PNG)", dicom_seg: "DICOM-SEG" };
  $("downloads").innerHTML = "download: " + Object.keys(names).filter((k) => files[k])
    .map((k) => `<a class="download" data-kind="${k}" href="/api/jobs/${job.id}/download/${k}">${names[k]}</a>`).join(" · ");
}

// ---- wiring -----------------------------------------------------------------------------------
async function init() {
  const info = await api("/api/info");
  $("version").textContent = info.version;
  $("max-upload").textContent = info.max_upload_mb.toFixed(0);
  if (info.samples.length) {
    $("samples").hidden = false;
    for (const s of info.samples) {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = s; b.className = "sample";
      b.onclick = () => chosen([], s);
      $("sample-buttons").appendChild(b);
    }
  }
  $("file").onchange = (e) => { $("folder").value = ""; chosen([...e.target.files], null); };
  $("folder").onchange = (e) => { $("file").value = ""; chosen([...e.target.files], null); };
  $("model").onchange = describeModel;
  $("start").onclick = start;
  $("layout").onchange = applyLayout;
  $("opacity").oninput = () => { if (state.nv && state.nv.volumes.length > 1) state.nv.setOpacity(1, Number($("opacity").value)); };
  await loadModels();
  await refreshJobs();
  setInterval(refreshJobs, 700);
  document.body.dataset.ready = "1";
}

init().catch((e) => showError(`the page could not start: ${e.message}`));
