// thaw app: plain JavaScript, no build step, no network beyond this server.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
};
const enc = encodeURIComponent;
const BUDGETS = [10, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400];
const UPLOAD_BATCH = 40;

const state = {
  info: null, project: localStorage.getItem("thaw.project") || "", data: null,
  runs: [], run: null, events: null, selectedRun: localStorage.getItem("thaw.run") || "",
};

// ------------------------------------------------------------------------------------------ API
async function api(method, path, body) {
  const opts = { method, headers: { "x-thaw-app": "1" } };
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) {
    opts.body = JSON.stringify(body);
    opts.headers["content-type"] = "application/json";
  }
  let res;
  try {
    res = await fetch(path, opts);
  } catch (err) {
    throw new Error("the thaw app does not answer: is `thaw app` still running?");
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (err) { data = { error: text }; }
  if (!res.ok) {
    const e = new Error((data && data.error) || `request failed (${res.status})`);
    e.data = data;
    throw e;
  }
  return data;
}
const projectPath = (p = state.project) => `/api/projects/${enc(p)}`;
const runPath = (run, p = state.project) => `${projectPath(p)}/runs/${enc(run)}`;

function showMessage(text, ok = false) {
  $("#message-text").textContent = text;
  $("#message").classList.toggle("ok", ok);
  $("#message").classList.remove("hidden");
}
function clearMessage() { $("#message").classList.add("hidden"); }
async function guarded(fn) {
  try { return await fn(); } catch (err) { showMessage(err.message); return undefined; }
}

// ------------------------------------------------------------------------------------------ tabs
function currentTab() { return (location.hash || "#data").slice(1); }
function showTab() {
  const tab = state.project ? currentTab() : "empty";
  document.querySelectorAll(".page").forEach((p) => p.classList.toggle("active", p.id === `page-${tab}`));
  document.querySelectorAll("#tabs a").forEach((a) => a.classList.toggle("active", a.dataset.tab === tab));
  if (!state.project) return;
  if (tab === "data") loadProject();
  if (tab === "train") loadTrain();
  if (tab === "inspect") loadRuns().then(renderInspect);
  if (tab === "try" || tab === "takeaway") loadRuns().then(renderRunSelects);
}
window.addEventListener("hashchange", () => { clearMessage(); showTab(); });

// ------------------------------------------------------------------------------------------ projects
async function loadProjects() {
  const list = await api("GET", "/api/projects");
  const sel = $("#project-select");
  sel.replaceChildren(...list.map((p) => el("option", { value: p.name }, `${p.name} (${p.classes} classes, ${p.images} images)`)));
  if (!list.some((p) => p.name === state.project)) state.project = list.length ? list[0].name : "";
  sel.value = state.project;
  sel.classList.toggle("hidden", !list.length);
  $("label[for=project-select]").classList.toggle("hidden", !list.length);
}
function selectProject(name) {
  state.project = name;
  state.selectedRun = "";
  localStorage.setItem("thaw.project", name);
  localStorage.removeItem("thaw.run");
  closeEvents();
  state.run = null;
  showTab();
}
$("#project-select").addEventListener("change", (e) => selectProject(e.target.value));
$("#new-project-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    const name = $("#new-project-name").value.trim();
    const res = await api("POST", "/api/projects", { name });
    $("#new-project-name").value = "";
    state.project = res.name;
    await loadProjects();
    location.hash = "#data";
    selectProject(res.name);
    clearMessage();
  });
});

// ------------------------------------------------------------------------------------------ data page
async function loadProject() {
  await guarded(async () => {
    state.data = await api("GET", projectPath());
    renderData();
    await loadProjects();  // the selector shows counts
  });
}

function renderData() {
  const d = state.data;
  const box = $("#classes");
  box.replaceChildren();
  if (!d.classes.length) box.append(el("div", { class: "card hint" }, "No classes yet. Add one above (e.g. 'cat'), then add its images."));
  for (const c of d.classes) box.append(classCard(c));
  const imp = $("#import-class");
  imp.replaceChildren(el("option", { value: "" }, "one class per subfolder"), ...d.classes.map((c) => el("option", { value: c.name }, `into class ${c.name}`)));
  $("#import-card").classList.toggle("hidden", !state.info.folder_import);
  renderAudit(d.audit);
}

function classCard(c) {
  const input = el("input", { type: "file", accept: "image/*", multiple: "" });
  input.addEventListener("change", () => uploadFiles(c.name, [...input.files]).then(() => { input.value = ""; }));
  const folderInput = el("input", { type: "file", multiple: "" });
  folderInput.webkitdirectory = true;
  folderInput.addEventListener("change", () => uploadFiles(c.name, [...folderInput.files]).then(() => { folderInput.value = ""; }));
  const thumbs = el("div", { class: "thumbs" });
  for (const name of c.images) {
    const url = `${projectPath()}/classes/${enc(c.name)}/thumbs/${enc(name)}`;
    const rm = el("button", { title: "remove this image", type: "button", onclick: () => removeImage(c.name, name) }, "×");
    thumbs.append(el("div", { class: "thumb", title: name }, el("img", { src: url, alt: name, loading: "lazy" }), rm));
  }
  const drop = el("div", { class: "dropzone" },
    "Drop images or a folder here, or ",
    el("label", { class: "filebutton" }, "choose images", input), " · ",
    el("label", { class: "filebutton" }, "choose a folder", folderInput));
  setupDrop(drop, async (files) => uploadFiles(c.name, files));
  const card = el("div", { class: "card class-card", "data-class": c.name },
    el("div", { class: "head" },
      el("h3", {}, c.name), el("span", { class: "count" }, `${c.images.length} images`), el("span", { class: "spacer" }),
      el("button", { type: "button", class: "danger", onclick: () => removeClass(c.name) }, "Remove class")),
    drop, thumbs);
  return card;
}

function renderAudit(a) {
  const box = $("#audit");
  box.replaceChildren();
  const rows = Object.entries(a.classes).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, v)));
  box.append(el("table", { class: "audit-table" }, el("thead", {}, el("tr", {}, el("th", {}, "class"), el("th", { class: "num" }, "images"))),
    el("tbody", {}, ...rows, el("tr", {}, el("td", {}, el("b", {}, "total")), el("td", { class: "num" }, el("b", {}, a.total))))));
  for (const p of a.problems) box.append(el("div", { class: "problem" }, "✗ " + p));
  for (const w of a.warnings) box.append(el("div", { class: "warning" }, "! " + w));
  if (a.ready && !a.warnings.length) box.append(el("div", { class: "good" }, "✓ ready to train"));
  else if (a.ready) box.append(el("div", { class: "good" }, "✓ ready to train (see the warnings)"));
  if (a.duplicates.length) box.append(el("div", { class: "warning" }, `! ${a.duplicates.length} set(s) of identical files: ` + a.duplicates.map((g) => g.join(" = ")).slice(0, 5).join("; ")));
  if (a.rejected.length) {
    const list = el("ul", { class: "hint" }, ...a.rejected.slice(-10).reverse().map((r) => el("li", {}, r.reason)));
    box.append(el("h3", {}, `Files refused at upload (${a.rejected.length})`), list);
  }
}

async function uploadFiles(cls, files) {
  const images = files.filter((f) => !f.name.startsWith("."));
  if (!images.length) return;
  let added = 0;
  const rejected = [];
  for (let i = 0; i < images.length; i += UPLOAD_BATCH) {
    showMessage(`uploading ${Math.min(i + UPLOAD_BATCH, images.length)} / ${images.length} images to ${cls} …`, true);
    const form = new FormData();
    for (const f of images.slice(i, i + UPLOAD_BATCH)) form.append("files", f, f.name);
    try {
      const res = await api("POST", `${projectPath()}/classes/${enc(cls)}/images`, form);
      added += res.added.length;
      rejected.push(...res.rejected);
    } catch (err) {
      if (err.data && err.data.rejected) rejected.push(...err.data.rejected);
      else { showMessage(err.message); await loadProject(); return; }
    }
  }
  await loadProject();
  if (rejected.length) showMessage(`added ${added} image(s) to ${cls}; refused ${rejected.length}: ` + rejected.slice(0, 3).map((r) => r.reason).join("; "));
  else showMessage(`added ${added} image(s) to ${cls}`, true);
}

async function removeImage(cls, name) {
  await guarded(() => api("DELETE", `${projectPath()}/classes/${enc(cls)}/images/${enc(name)}`));
  await loadProject();
}
async function removeClass(cls) {
  if (!confirm(`Remove class ${cls} and all its images? Finished runs keep their models.`)) return;
  await guarded(() => api("DELETE", `${projectPath()}/classes/${enc(cls)}`));
  await loadProject();
}

$("#add-class-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    await api("POST", `${projectPath()}/classes`, { name: $("#new-class-name").value.trim() });
    $("#new-class-name").value = "";
    clearMessage();
    await loadProject();
  });
});
$("#import-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    showMessage("importing … (every image is checked)", true);
    const res = await api("POST", `${projectPath()}/import`, { folder: $("#import-path").value.trim(), class_name: $("#import-class").value || null });
    await loadProject();
    showMessage(`imported ${res.added.length} image(s)` + (res.rejected.length ? `; refused ${res.rejected.length}: ${res.rejected.slice(0, 3).map((r) => r.reason).join("; ")}` : ""), !res.rejected.length);
  });
});

// drag and drop: files, and folders through the File System entries API
function setupDrop(zone, onFiles) {
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const entries = [...e.dataTransfer.items].map((it) => it.webkitGetAsEntry && it.webkitGetAsEntry()).filter(Boolean);
    if (entries.length) onFiles(await filesFromEntries(entries), entries);
    else onFiles([...e.dataTransfer.files], []);
  });
}
async function filesFromEntries(entries) {
  const out = [];
  const walk = async (entry) => {
    if (entry.isFile) out.push(await new Promise((res, rej) => entry.file(res, rej)));
    else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const child of batch) await walk(child);
      }
    }
  };
  for (const entry of entries) await walk(entry);
  return out;
}
setupDrop($("#drop-classes"), async (_files, entries) => {
  const folders = entries.filter((en) => en.isDirectory);
  if (!folders.length) { showMessage("drop folders here (one per class); drop images onto a class card"); return; }
  for (const folder of folders) {
    const reader = folder.createReader();
    const children = await new Promise((res, rej) => reader.readEntries(res, rej));
    const subdirs = children.filter((c) => c.isDirectory);
    const classes = subdirs.length ? subdirs : [folder];
    for (const c of classes) {
      const exists = state.data.classes.some((k) => k.name === c.name);
      if (!exists) {
        const ok = await guarded(() => api("POST", `${projectPath()}/classes`, { name: c.name }));
        if (!ok) continue;
        await loadProject();
      }
      await uploadFiles(c.name, await filesFromEntries([c]));
    }
  }
});

// ------------------------------------------------------------------------------------------ train page
function budgetSeconds() { return BUDGETS[Number($("#budget").value)]; }
function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ""}`;
  return `${Math.floor(s / 3600)} h${Math.round((s % 3600) / 60) ? ` ${Math.round((s % 3600) / 60)} min` : ""}`;
}
const fmtAcc = (v) => (v === null || v === undefined ? "–" : v.toFixed(3));
$("#budget").addEventListener("input", () => { $("#budget-label").textContent = fmtSeconds(budgetSeconds()); });

async function loadTrain() {
  await guarded(async () => {
    state.data = await api("GET", projectPath());
    const probs = $("#train-problems");
    probs.replaceChildren(...state.data.audit.problems.map((p) => el("div", { class: "problem" }, "✗ " + p)));
    await loadRuns();
    const active = state.runs.find((r) => r.status === "training");
    const pick = active || state.runs.find((r) => r.name === state.selectedRun) || state.runs[0];
    if (pick) watchRun(pick.name);
  });
}

$("#train-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    const advanced = $("#advanced").open;
    const body = {
      strategy: advanced ? $("#strategy").value : "auto",
      time_budget: budgetSeconds(),
      model: $("#model").value.trim() || "efficientnet_lite0",
      img_size: $("#img-size").value ? Number($("#img-size").value) : null,
      epochs: advanced && $("#epochs").value ? Number($("#epochs").value) : null,
      k: advanced && $("#k").value ? Number($("#k").value) : null,
    };
    const run = await api("POST", `${projectPath()}/runs`, body);
    clearMessage();
    watchRun(run.name);
  });
});
$("#stop-button").addEventListener("click", () => guarded(async () => {
  $("#stop-button").disabled = true;
  renderRun(await api("POST", `${runPath(state.run.name)}/stop`));
}));
$("#resume-button").addEventListener("click", () => guarded(async () => {
  const run = await api("POST", `${runPath(state.run.name)}/resume`);
  clearMessage();
  watchRun(run.name);
}));
$("#open-report-button").addEventListener("click", () => { state.selectedRun = state.run.name; location.hash = "#inspect"; });

function closeEvents() { if (state.events) { state.events.close(); state.events = null; } }
function watchRun(name) {
  closeEvents();
  state.selectedRun = name;
  localStorage.setItem("thaw.run", name);
  api("GET", runPath(name)).then((run) => {
    renderRun(run);
    if (run.status !== "training") return;
    const src = new EventSource(`${runPath(name)}/events`);
    state.events = src;
    src.addEventListener("state", (ev) => renderRun(JSON.parse(ev.data)));
    src.addEventListener("end", () => { closeEvents(); refreshActive(); });
    src.onerror = () => {  // the app restarted or the connection dropped: poll once, then reconnect if still training
      closeEvents();
      setTimeout(() => { if (currentTab() === "train" && state.run && state.run.name === name) watchRun(name); }, 2000);
    };
  }).catch((err) => showMessage(err.message));
}

function renderRun(run) {
  state.run = run;
  $("#progress-empty").classList.add("hidden");
  $("#progress").classList.remove("hidden");
  const badge = $("#run-status");
  badge.textContent = run.status;
  badge.className = `badge ${run.status}`;
  $("#p-run").textContent = run.name;
  $("#p-epoch").textContent = run.epoch ?? "–";
  $("#p-phase").textContent = run.phase ?? (run.status === "training" ? "preparing …" : "–");
  $("#p-thawed").textContent = run.trainable_groups ? run.trainable_groups.join(", ") : "–";
  $("#p-elapsed").textContent = fmtSeconds(run.elapsed);
  $("#p-left").textContent = run.status === "training" ? (run.time_left !== null ? `≤ ${fmtSeconds(run.time_left)}` : "–") : "–";
  const best = run.metrics && run.metrics.length ? Math.max(...run.metrics.map((m) => m.val_accuracy ?? 0)) : null;
  $("#p-best").textContent = fmtAcc(run.best_val_accuracy ?? best);
  const msg = run.status === "failed" ? `The run failed: ${run.message}` : run.message;
  $("#p-message").textContent = msg;
  $("#p-message").className = run.status === "failed" ? "problem" : "hint";
  $("#stop-button").classList.toggle("hidden", run.status !== "training");
  $("#stop-button").disabled = false;
  $("#resume-button").classList.toggle("hidden", !run.resumable);
  $("#open-report-button").classList.toggle("hidden", !run.has_report);
  $("#train-button").disabled = run.status === "training";
  const lines = (run.log || []).filter((l) => !l.startsWith("$ "));
  const decisions = (run.decisions || []).map((d) => (typeof d === "string" ? `decision: ${d}`
    : `decision (phase ${(d.phase ?? 0) + 1}): ${d.decision}${d.reason ? ` (${d.reason})` : ""}`));
  $("#p-log").textContent = [...lines, ...decisions].join("\n");
  $("#p-log").scrollTop = $("#p-log").scrollHeight;
  const m = run.metrics || [];
  drawChart($("#chart-acc"), m, ["train_accuracy", "val_accuracy"], [0, 1]);
  drawChart($("#chart-loss"), m, ["train_loss", "val_loss"], null);
  refreshActive();
}

function drawChart(canvas, rows, keys, range) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 40, R = 10, T = 10, B = 24;
  ctx.clearRect(0, 0, W, H);
  const vals = rows.flatMap((r) => keys.map((k) => r[k])).filter((v) => typeof v === "number" && isFinite(v));
  let lo = range ? range[0] : Math.min(...vals, 0), hi = range ? range[1] : Math.max(...vals, 0.1);
  if (hi <= lo) hi = lo + 1;
  const n = Math.max(rows.length, 2);
  const x = (i) => L + ((W - L - R) * i) / (n - 1);
  const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
  ctx.strokeStyle = "#e3e6ec"; ctx.fillStyle = "#667085"; ctx.font = "11px system-ui"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    ctx.beginPath(); ctx.moveTo(L, y(v)); ctx.lineTo(W - R, y(v)); ctx.stroke();
    ctx.fillText(v.toFixed(2), 4, y(v) + 4);
  }
  ctx.fillText("epoch", W - R - 32, H - 6);
  // phase boundaries: a new phase is where thaw thawed more (or other) layers
  rows.forEach((r, i) => {
    if (i > 0 && r.phase !== rows[i - 1].phase) {
      ctx.strokeStyle = "#c7cdd8"; ctx.setLineDash([4, 4]);
      ctx.beginPath(); ctx.moveTo(x(i - 0.5), T); ctx.lineTo(x(i - 0.5), H - B); ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillText(String(r.phase_name ?? r.phase + 1).slice(0, 14), x(i - 0.5) + 3, T + 10);
    }
  });
  const colors = ["#2563eb", "#dc6b19"];
  keys.forEach((k, j) => {
    ctx.strokeStyle = colors[j]; ctx.fillStyle = colors[j]; ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    rows.forEach((r, i) => {
      if (typeof r[k] !== "number") return;
      if (!started) { ctx.moveTo(x(i), y(r[k])); started = true; } else ctx.lineTo(x(i), y(r[k]));
    });
    ctx.stroke();
    rows.forEach((r, i) => { if (typeof r[k] === "number") { ctx.beginPath(); ctx.arc(x(i), y(r[k]), 2.5, 0, 7); ctx.fill(); } });
    ctx.fillText(k.replace("_", " "), L + 8 + j * 110, H - 6);
  });
}

// ------------------------------------------------------------------------------------------ runs, inspect
async function loadRuns() {
  await guarded(async () => { state.runs = await api("GET", `${projectPath()}/runs`); });
}
function renderInspect() {
  const body = $("#runs-table tbody");
  body.replaceChildren();
  $("#runs-empty").classList.toggle("hidden", state.runs.length > 0);
  $("#runs-table").classList.toggle("hidden", !state.runs.length);
  for (const r of state.runs) {
    const action = r.resumable
      ? el("button", { type: "button", onclick: (e) => { e.stopPropagation(); guarded(async () => { await api("POST", `${runPath(r.name)}/resume`); location.hash = "#train"; }); } }, "Resume")
      : "";
    const tr = el("tr", { "data-run": r.name, class: r.name === state.selectedRun ? "selected" : "", onclick: () => { state.selectedRun = r.name; localStorage.setItem("thaw.run", r.name); renderInspect(); } },
      el("td", {}, r.name), el("td", {}, el("span", { class: `badge ${r.status}` }, r.status)),
      el("td", {}, r.strategy || "–"), el("td", {}, r.model || "–"), el("td", { class: "num" }, r.epochs_done),
      el("td", { class: "num" }, fmtAcc(r.best_val_accuracy)), el("td", { class: "num" }, fmtAcc(r.test_accuracy)), el("td", {}, action));
    body.append(tr);
  }
  const run = state.runs.find((r) => r.name === state.selectedRun) || state.runs.find((r) => r.has_report);
  const frame = $("#report-frame");
  if (run && run.has_report) {
    state.selectedRun = run.name;
    $("#report-run").textContent = run.name;
    const src = `${runPath(run.name)}/report`;
    if (frame.getAttribute("src") !== src) frame.setAttribute("src", src);
    frame.classList.remove("hidden");
    $("#report-empty").classList.add("hidden");
    body.querySelectorAll("tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.run === run.name));
  } else {
    frame.classList.add("hidden");
    frame.removeAttribute("src");
    $("#report-run").textContent = run ? run.name : "";
    $("#report-empty").textContent = run ? `Run ${run.name} is ${run.status}: its report is written when it finishes.` : "Pick a finished run above.";
    $("#report-empty").classList.remove("hidden");
  }
}

// ------------------------------------------------------------------------------------------ try, take away
function finishedRuns() { return state.runs.filter((r) => r.has_model); }
function renderRunSelects() {
  const runs = finishedRuns();
  for (const sel of document.querySelectorAll(".run-select")) {
    sel.replaceChildren(...runs.map((r) => el("option", { value: r.name }, `${r.name} (val acc ${fmtAcc(r.best_val_accuracy)})`)));
    if (runs.some((r) => r.name === state.selectedRun)) sel.value = state.selectedRun;
  }
  $("#take-body").classList.toggle("hidden", !runs.length);
  $("#take-empty").classList.toggle("hidden", runs.length > 0);
  if (!runs.length && currentTab() === "try") $("#predictions").replaceChildren(el("div", { class: "hint" }, "No finished run yet: train one first."));
  renderTakeaway();
}
document.querySelectorAll(".run-select").forEach((sel) => sel.addEventListener("change", () => {
  state.selectedRun = sel.value;
  localStorage.setItem("thaw.run", sel.value);
  renderRunSelects();
}));

async function predictFiles(files) {
  const run = $("#try-run").value;
  if (!run) { showMessage("no finished run to try: train one first"); return; }
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  await guarded(async () => {
    const res = await api("POST", `${runPath(run)}/predict?top_k=3`, form);
    const byName = new Map(files.map((f) => [f.name, f]));
    const box = $("#predictions");
    for (const p of res.predictions.reverse()) {
      const f = byName.get(p.file);
      const card = el("div", { class: "prediction" }, el("img", { src: f ? URL.createObjectURL(f) : "", alt: p.file }), el("div", { class: "name" }, p.file));
      p.top.forEach((t, i) => card.append(el("div", { class: `bar ${i === 0 ? "top1" : ""}` },
        el("span", { class: "label" }, t.label),
        el("span", { class: "track" }, el("span", { class: "fill", style: `width:${(100 * t.probability).toFixed(1)}%;display:block` })),
        el("span", { class: "p" }, `${(100 * t.probability).toFixed(1)}%`))));
      box.prepend(card);
    }
    if (res.skipped.length) showMessage("not classified: " + res.skipped.map((s) => s.reason).join("; "));
    else clearMessage();
  });
}
$("#try-files").addEventListener("change", (e) => predictFiles([...e.target.files]).then(() => { e.target.value = ""; }));
setupDrop($("#drop-try"), (files) => predictFiles(files));

// webcam snapshots (where the browser offers a camera; localhost counts as a secure context)
let stream = null;
if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) $("#webcam-button").classList.remove("hidden");
$("#webcam-button").addEventListener("click", () => guarded(async () => {
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true });
  } catch (err) {
    throw new Error(`the browser gave no camera (${err.name}): allow camera access for this page, or upload images`);
  }
  $("#webcam-video").srcObject = stream;
  $("#webcam").classList.remove("hidden");
}));
$("#webcam-close").addEventListener("click", () => {
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  $("#webcam").classList.add("hidden");
});
$("#snap-button").addEventListener("click", () => {
  const v = $("#webcam-video");
  const c = el("canvas");
  c.width = v.videoWidth; c.height = v.videoHeight;
  c.getContext("2d").drawImage(v, 0, 0);
  c.toBlob((blob) => predictFiles([new File([blob], `webcam-${new Date().toISOString().slice(11, 19).replaceAll(":", "")}.png`, { type: "image/png" })]), "image/png");
});

function renderTakeaway() {
  const run = finishedRuns().find((r) => r.name === $("#take-run").value);
  if (!run) return;
  $("#download-zip").href = `${runPath(run.name)}/model.zip`;
  $("#download-zip").setAttribute("download", `${run.name}-model.zip`);
  $("#download-onnx").href = `${runPath(run.name)}/model.onnx`;
  $("#download-onnx").classList.toggle("hidden", !run.has_onnx);
  $("#onnx-button").classList.toggle("hidden", run.has_onnx);
  $("#onnx-status").textContent = "";
  $("#timm-snippet").textContent = `import timm\nmodel = timm.create_model("local-dir:${run.name}-model/model", pretrained=True)\nlabels = model.pretrained_cfg["label_names"]`;
  $("#command-line").textContent = run.command || "(this run was not started from the app)";
}
$("#onnx-button").addEventListener("click", () => guarded(async () => {
  $("#onnx-button").disabled = true;
  $("#onnx-status").textContent = "exporting and checking against PyTorch …";
  try {
    const res = await api("POST", `${runPath($("#take-run").value)}/onnx`);
    $("#onnx-status").textContent = `verified: max |logit difference| ${res.max_abs_diff.toExponential(1)}`;
    $("#download-onnx").classList.remove("hidden");
    $("#onnx-button").classList.add("hidden");
  } catch (err) {
    $("#onnx-status").textContent = "";
    throw err;
  } finally {
    $("#onnx-button").disabled = false;
  }
}));
$("#copy-command").addEventListener("click", async () => {
  const text = $("#command-line").textContent;
  try {
    await navigator.clipboard.writeText(text);
    showMessage("command copied", true);
  } catch (err) {  // no clipboard permission: select the text so Ctrl-C copies it
    const range = document.createRange();
    range.selectNodeContents($("#command-line"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    showMessage("press Ctrl-C to copy the selected command", true);
  }
});

// ------------------------------------------------------------------------------------------ active run banner
async function refreshActive() {
  const active = await api("GET", "/api/active").catch(() => null);
  const b = $("#active-banner");
  if (active && !(currentTab() === "train" && active.project === state.project)) {
    b.replaceChildren(`Training ${active.run} (project ${active.project}) · `, el("a", { href: "#train", onclick: () => { if (active.project !== state.project) { $("#project-select").value = active.project; selectProject(active.project); } } }, "watch it"));
    b.classList.remove("hidden");
  } else b.classList.add("hidden");
}

// ------------------------------------------------------------------------------------------ start
$("#message-close").addEventListener("click", clearMessage);
(async function start() {
  await guarded(async () => {
    state.info = await api("GET", "/api/info");
    $("#footer-info").textContent = `thaw ${state.info.version} · data folder ${state.info.data_dir}`;
    $("#model-list").replaceChildren(...state.info.models.map((m) => el("option", { value: m })));
    $("#strategy").replaceChildren(...state.info.strategies.filter((s) => s !== "groups").map((s) => el("option", { value: s }, s)));
    $("#strategy").value = "auto";
    $("#budget-label").textContent = fmtSeconds(budgetSeconds());
    await loadProjects();
    showTab();
    refreshActive();
  });
})();
