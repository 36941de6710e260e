// tunewright studio: the little JavaScript the pages need (no framework, no build step).
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function fmt(x, digits) {
  return x === null || x === undefined ? "—" : Number(x).toFixed(digits);
}

function duration(s) {
  if (s === null || s === undefined) return "—";
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
  return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
}

// Draw training and validation loss against step into an <svg viewBox="0 0 560 260">.
function drawLoss(svg, train, valid) {
  const W = 560, H = 260, L = 46, R = 12, T = 12, B = 28;
  svg.replaceChildren();
  const all = train.concat(valid);
  if (all.length === 0) {
    svg.appendChild(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "waiting for the first logged step…"));
    return;
  }
  const maxStep = Math.max(1, ...all.map((p) => p[0]));
  let lo = Math.min(...all.map((p) => p[1])), hi = Math.max(...all.map((p) => p[1]));
  if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const x = (s) => L + ((W - L - R) * s) / maxStep;
  const y = (v) => T + ((H - T - B) * (hi - v)) / (hi - lo);
  for (let k = 0; k <= 4; k++) {
    const v = lo + ((hi - lo) * k) / 4;
    svg.appendChild(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid-line" }));
    svg.appendChild(svgEl("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(2)));
  }
  svg.appendChild(svgEl("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  svg.appendChild(svgEl("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  for (const s of [0, Math.round(maxStep / 2), maxStep]) {
    svg.appendChild(svgEl("text", { x: x(s), y: H - B + 16, "text-anchor": "middle" }, String(s)));
  }
  svg.appendChild(svgEl("text", { x: W - R, y: H - 4, "text-anchor": "end" }, "step"));
  const line = (pts, cls) => {
    if (pts.length === 0) return;
    const d = pts.map((p, k) => (k ? "L" : "M") + x(p[0]).toFixed(1) + " " + y(p[1]).toFixed(1)).join(" ");
    svg.appendChild(svgEl("path", { d: d, class: cls }));
    // validation losses are sparse, and a single training point has no line: mark them
    if (cls === "valid" || pts.length === 1) {
      for (const p of pts) svg.appendChild(svgEl("circle", { cx: x(p[0]), cy: y(p[1]), r: 3.5, class: cls }));
    }
  };
  line(train, "train");
  line(valid, "valid");
  svg.dataset.points = String(train.length);
}

// The job page: follow /jobs/{id}/stream (server-sent events) and keep the figures current.
function watchJob(jobId, live) {
  const train = [], valid = [];
  const svg = document.getElementById("chart");
  drawLoss(svg, train, valid);
  const source = new EventSource("/jobs/" + jobId + "/stream");
  source.addEventListener("metrics", (e) => {
    for (const row of JSON.parse(e.data)) {
      // a resumed job logs again from its checkpoint's step: the new rows replace the old
      if (row.train_loss !== undefined) {
        while (train.length && train[train.length - 1][0] >= row.step) train.pop();
        if (row.train_loss !== null) train.push([row.step, row.train_loss]);
      }
      if (row.val_loss !== undefined) {
        while (valid.length && valid[valid.length - 1][0] >= row.step) valid.pop();
        if (row.val_loss !== null) valid.push([row.step, row.val_loss]);
      }
    }
    drawLoss(svg, train, valid);
  });
  source.addEventListener("progress", (e) => {
    const p = JSON.parse(e.data);
    if (p.step) document.getElementById("step").textContent = p.step + (p.total ? " / " + p.total : "");
    if (p.loss !== null && p.loss !== undefined) document.getElementById("loss").textContent = fmt(p.loss, 3);
    if (p.tokens_per_second) document.getElementById("tps").textContent = fmt(p.tokens_per_second, 0);
    document.getElementById("eta").textContent = duration(p.eta_s);
    const bar = document.querySelector("#bar .progress > div");
    if (bar) bar.style.width = p.percent + "%";
  });
  source.addEventListener("events", (e) => {
    const rows = JSON.parse(e.data).map((ev) => {
      const tr = document.createElement("tr");
      const when = document.createElement("td");
      when.className = "muted";
      when.style.whiteSpace = "nowrap";
      when.textContent = ev.when;
      const message = document.createElement("td");
      message.textContent = ev.message;
      tr.append(when, message);
      return tr;
    });
    document.getElementById("events").replaceChildren(...rows);
  });
  source.addEventListener("log", (e) => {
    const log = document.getElementById("log");
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    log.textContent = JSON.parse(e.data);
    if (atEnd) log.scrollTop = log.scrollHeight;
  });
  source.addEventListener("done", () => {
    source.close();
    if (live) location.reload(); // the finished page: verdict links, final events, no cancel
  });
  const log = document.getElementById("log");
  log.scrollTop = log.scrollHeight;
}

// Compare: stream one prompt through /v1/chat/completions for each of the two chosen models.
async function streamAnswer(model, prompt, out, maxTokens) {
  out.textContent = "";
  out.classList.remove("error");
  out.dataset.done = "false";
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    credentials: "same-origin",
    body: JSON.stringify({
      model: model, stream: true, max_tokens: maxTokens, temperature: 0,
      messages: [{ role: "user", content: prompt }],
    }),
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    out.textContent = (body.error && body.error.message) || response.statusText;
    out.classList.add("error");
    out.dataset.done = "true";
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.replace(/^data: ?/, "");
      if (data === "[DONE]") continue;
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch (err) {
        continue; // not an event this page reads
      }
      if (chunk.error) {
        out.textContent += (out.textContent ? "\n" : "") + chunk.error.message;
        out.classList.add("error");
        continue;
      }
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) out.textContent += delta.content;
    }
  }
  if (out.textContent.trim() === "") out.textContent = "(no visible answer)";
  out.dataset.done = "true";
}

function setupCompare() {
  const form = document.getElementById("compare-form");
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const prompt = document.getElementById("prompt").value;
    const maxTokens = Number(document.getElementById("max-tokens").value) || 64;
    for (const side of ["a", "b"]) {
      const model = document.getElementById("model-" + side).value;
      const out = document.getElementById("answer-" + side);
      streamAnswer(model, prompt, out, maxTokens).catch((err) => {
        out.textContent = String(err);
        out.classList.add("error");
        out.dataset.done = "true";
      });
    }
  });
}
